"""The backend contract: what an engine must offer parlay's core.

A :class:`Backend` is a named engine with a frozen :class:`Capabilities` record. Its
:meth:`Backend.open` returns a :class:`Session`: a pool of workers that runs batches of
tasks and answers each with a :class:`concurrent.futures.Future`. Batching, ordering,
timeouts, nesting and errors are written once in the core (``_runner.py``) on top of
these few methods, as :meth:`concurrent.futures.Executor.map` is built on ``submit``.

To add an engine, subclass :class:`Backend` and :class:`Session` and register the
backend by name with :func:`parlay.register_backend`; :func:`parlay.testing.check_backend`
runs the conformance checks every backend must pass.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .._negotiate import Decision
    from .._worker import Batch, BatchResult

__all__ = ["Backend", "BridgedFuture", "Capabilities", "Session"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; the negotiation and the runner read only these facts.

    Attributes
    ----------
    shared_memory : bool
        Tasks see the caller's objects, so writes into a shared array are visible
        (``require="sharedmem"`` needs this).
    separate_processes : bool
        Tasks run in other processes: everything they take and return is pickled.
    distributed : bool
        Workers may live on other machines (a cluster engine).
    can_kill : bool
        A running task can be stopped (by killing its worker) on timeout or Ctrl-C.
    inline : bool
        Tasks run in the caller's own thread, one after another.
    reentrant : bool
        A task may submit work to the same engine and wait for it without holding its
        worker's slot (Dask's ``secede``): nested calls inherited from outside the task
        may go back to the engine.
    batch_seconds : float
        The duration automatic batching aims each batch at: long enough that the cost
        of sending a batch is small beside its work, short enough to balance the load.
    """

    shared_memory: bool
    separate_processes: bool
    distributed: bool = False
    can_kill: bool = False
    inline: bool = False
    reentrant: bool = False
    batch_seconds: float = 0.02


def engine_task_name(batch: Batch) -> str:
    """``parlay_<function>``: what a cluster engine names a batch's task, so that its
    dashboard groups tasks by function (Dask takes a key's first word as its group)."""
    name = str(getattr(batch.func_of(0), "__name__", "task")).replace("-", "_")
    return f"parlay_{name}"


class BridgedFuture(Future[Any]):
    """A :class:`concurrent.futures.Future` fed by an engine's own future.

    For engines whose futures are not ``concurrent.futures`` ones (Dask), or whose
    results need converting (unpickling, mapping engine errors): the session makes one
    per batch, and the engine's done-callback calls :meth:`settle` or
    :meth:`source_cancelled`. Cancelling it calls `cancel_source` (which may leave the
    engine's work running: Ray's gentle cancel can crash its driver).
    """

    def __init__(self, source: object, cancel_source: Callable[[], object]) -> None:
        super().__init__()
        self.source = source
        self._cancel_source = cancel_source
        #: The ``concurrent.futures`` future :meth:`follow` follows, if any.
        self.followed: Future[Any] | None = None

    def cancel(self) -> bool:
        # Like Future.cancel: False when the work already runs (the source said False).
        if self.done() or self._cancel_source() is False:
            return False
        return super().cancel()

    def source_cancelled(self) -> None:
        """The engine cancelled the source: cancel this future too."""
        super().cancel()

    def settle(
        self,
        compute: Callable[[], Any],
        map_error: Callable[[BaseException], BaseException] = lambda exc: exc,
    ) -> None:
        """Finish with ``compute()``, or with ``map_error`` of what it raised."""
        if not self.set_running_or_notify_cancel():
            return
        try:
            value = compute()
        except BaseException as exc:
            self.set_exception(map_error(exc))
        else:
            self.set_result(value)

    def follow(
        self,
        source: Future[Any],
        convert: Callable[[Any], Any],
        map_error: Callable[[BaseException], BaseException],
    ) -> None:
        """Settle with ``convert`` of what a ``concurrent.futures`` source gives, once done."""

        def _done(done: Future[Any]) -> None:
            if done.cancelled():
                self.source_cancelled()
            else:
                self.settle(lambda: convert(done.result()), map_error)

        self.followed = source
        source.add_done_callback(_done)


class Session(abc.ABC):
    """An open pool of workers, reused by many calls (possibly from several threads).

    Attributes
    ----------
    n_workers : int
        How many batches the session runs at once.
    """

    n_workers: int

    @abc.abstractmethod
    def submit(self, batch: Batch) -> Future[BatchResult]:
        """Start running `batch`; return a future of its :class:`BatchResult`.

        A worker in this process runs it with ``batch.run()``; a worker in another
        process runs ``parlay.Batch.run_packed(batch.pack())`` and the session returns
        ``batch.unpack(data)`` of what that gave back.

        Engine errors that mean the pool is broken (a worker died) are raised by the
        future as :class:`parlay.WorkerDiedError`; errors the batch could not be sent
        for (pickling) are raised here as :class:`parlay.SerializationError`.
        """

    def cancel(self, futures: Iterable[Future[BatchResult]], *, kill: bool) -> None:
        """Cancel `futures` that have not started; with `kill`, stop running ones too.

        Killing is best effort and only where the backend's ``can_kill`` capability
        says so; the default cancels pending futures only. Without `kill`, a future whose
        work runs must stay pending until that work ends (as ``Future.cancel`` leaves a
        running future): :meth:`still_running` tells the runner so.
        """
        for future in futures:
            future.cancel()

    def still_running(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        """Of `futures` given to ``cancel(kill=False)``, those whose work goes on in a
        worker: futures that finish when it ends. Until then that worker is not free,
        and a later call's timeout must not count the wait for it (see the runner)."""
        return [future for future in futures if not future.done()]

    @abc.abstractmethod
    def close(self) -> None:
        """Release the workers. Idempotent."""

    def describe(self) -> str:
        """A short description for explain() and messages, e.g. ``processes (2 workers)``."""
        return f"{type(self).__name__} ({self.n_workers} workers)"

    def blocking(self) -> contextlib.AbstractContextManager[None]:
        """Entered while a call waits on this session (from its start to its end).

        A reentrant engine leaves its worker slot here when the call runs inside one of
        its own tasks, and takes it back on exit, so nested calls cannot deadlock.
        """
        return contextlib.nullcontext()


class Backend(abc.ABC):
    """A named engine and what it can do; opens sessions.

    Subclasses set :attr:`name` and :attr:`capabilities` as class attributes (the
    negotiation reads them without starting anything), take their options as keyword
    arguments of ``__init__`` (rejecting unknown ones with ``TypeError``), and
    implement :meth:`open`. Engines are imported in :meth:`open`, never at module level;
    list them in :attr:`requires` so that a missing one is reported before anything starts.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: Modules the engine needs; checked (without importing them) before the backend is used.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The parlay extra that installs them, named in the error when one is missing.
    extra: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        if params:
            raise TypeError(f"backend {self.name!r} takes no parameters, got {sorted(params)}")

    @abc.abstractmethod
    def open(self, decision: Decision) -> Session:
        """Open a session sized for `decision` (``decision.n_jobs`` workers)."""

    def session_key(self) -> tuple[Any, ...]:
        """What makes two sessions of this backend interchangeable, beyond the worker count.

        Sessions are cached by ``(name, n_workers, session_key())``; a backend whose
        parameters change the engine (an address, say) includes them here.
        """
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
