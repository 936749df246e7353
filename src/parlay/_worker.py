"""What runs around each batch in a worker, and how batches cross process boundaries.

A :class:`Batch` is a run of consecutive tasks of one call, stored by column (one
function when all tasks share it, which is the common case, then the arguments), so
that a batch of thousands of tiny tasks pickles as a function and a list.

:func:`run_batch` runs the tasks under the nesting record and configuration the caller
gave them, times the batch, and catches each task's exception so that the caller can
name the task. For workers in other processes, :func:`pack` and :func:`run_packed`
do the (un)pickling themselves, so that each stage that can fail (sending, receiving in
the worker, sending the results back, receiving them) fails with an error that names
the task instead of an engine error or a hang.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, cast

from . import _budget, _config, _output
from ._exceptions import RemoteTraceback, SerializationError
from ._instrument import BatchReport
from ._sharing import (
    CallShares,
    dumps_sharing,
    loads_shared,
    mappings_of_copies,
    resolve,
    unmapped,
)

__all__ = ["Batch", "BatchResult", "WorkerContext", "pack", "run_batch", "run_packed", "unpack"]

NO_KWARGS: Final[dict[str, Any]] = {}


def _dumps(obj: object) -> bytes:
    import cloudpickle  # here, not at module level: `import parlay` stays light

    return cast(bytes, cloudpickle.dumps(obj))


def _loads(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a batch's tasks need to know about where they run (for nested calls)."""

    nesting: _budget.Nesting
    layers: tuple[_config.ConfigLayer, ...] = ()
    # The tasks run in a worker (not inline in the caller): joblib calls they make are
    # routed to parlay there, so that they get the task's budget (see parlay.joblib).
    in_worker: bool = False
    # Threads each task's native pools (BLAS, OpenMP) may use in a worker process.
    native_threads: int | None = None
    # Record when each task starts and ends (an instrument asked for task events).
    timing: bool = False
    # The lowest log level the caller's loggers let through: a worker process keeps
    # the tasks' records from there up and sends them back (see ``_output``).
    log_level: int = 30


@dataclass(slots=True)
class Batch:
    """Consecutive tasks ``start, start + 1, ...`` of one call, by column.

    ``func`` is the function shared by every task, or a list with one per task.
    ``cancel`` is the call's cancellation flag; it only works where the worker shares
    memory with the caller (threads, inline) and is dropped by :func:`pack`. ``shares``
    holds the call's large arguments already put into the engine (see ``_sharing``).
    """

    start: int
    func: Callable[..., Any] | list[Callable[..., Any]]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]] | None  # None: no task has keyword arguments
    context: WorkerContext
    stop_on_error: bool = True
    cancel: threading.Event | None = None
    shares: CallShares | None = None

    def __len__(self) -> int:
        return len(self.args)

    @property
    def indices(self) -> range:
        """The call-wide indices of this batch's tasks."""
        return range(self.start, self.start + len(self.args))

    def func_of(self, offset: int) -> Callable[..., Any]:
        """The function of the task at `offset` in this batch."""
        return self.func[offset] if isinstance(self.func, list) else self.func

    def kwargs_of(self, offset: int) -> dict[str, Any]:
        """The keyword arguments of the task at `offset` in this batch."""
        return NO_KWARGS if self.kwargs is None else self.kwargs[offset]

    def run(self) -> BatchResult:
        """Run the tasks here, in this thread (what a worker in this process calls)."""
        return run_batch(self)

    def pack(self) -> bytes:
        """Pickle the batch for a worker in another process (see :meth:`run_packed`)."""
        return pack(self)

    def pack_sharing(
        self, put: Callable[[object], Any], *, local: bool = False
    ) -> tuple[bytes, list[Any]]:
        """Pickle the batch, leaving out large arrays, which ``put`` sends to the engine.

        Returns the payload and the handles ``put`` gave, which the engine must hand to
        :meth:`run_packed` as values, in order, after the payload. Each array is put once
        per call, however many tasks and batches use it. ``local=True`` says that the
        workers run on this machine: arrays made by :func:`parlay.share` then travel as
        references to their shared memory, without ``put``.
        """
        return pack_sharing(self, put, local=local)

    @staticmethod
    def run_packed(payload: bytes, *shared: Any) -> bytes:
        """In a worker process: unpickle a packed batch, run it, pickle its result."""
        return run_packed(payload, *shared)

    def skeleton(self) -> Batch:
        """This batch without its arguments: what an engine's callbacks may keep.

        An engine can hold on to a finished future (and the callbacks on it) long after
        the call; a callback holding the whole batch would keep the call's arrays alive.
        """
        n = len(self.args)
        return replace(self, args=[()] * n, kwargs=None, cancel=None, shares=None)

    def unpack(self, data: bytes) -> BatchResult:
        """In the caller: unpickle what :meth:`run_packed` returned for this batch."""
        return unpack(data, self)


@dataclass(slots=True)
class BatchResult:
    """What comes back from a batch.

    ``values`` holds one entry per task that ran, in order; where a task raised, its
    entry is the exception and its offset is in ``errors`` with the worker's formatted
    traceback (text, only when the worker was another process). Tasks after the first
    error are not run when the batch stops on errors; ``cancelled`` tells that the
    batch stopped early because the call was cancelled. ``fatal`` is set when the batch
    could not run at all (it failed to unpickle in the worker).
    """

    values: list[Any]
    errors: dict[int, str | None] = field(default_factory=dict)
    elapsed: float = 0.0
    worker: str = ""
    cancelled: bool = False
    fatal: BaseException | None = None
    fatal_tb: str | None = None
    # Warnings the tasks raised in a worker process: (message, category, filename, lineno).
    warnings: list[tuple[str, type[Warning], str, int]] = field(default_factory=list)
    # Where it ran.
    host: str = ""
    pid: int = 0
    thread: str = ""
    # With WorkerContext.timing: the wall-clock time (time.time()) when the first task
    # started, then when each task ended; task i ran from stamps[i] to stamps[i + 1].
    stamps: list[float] | None = None
    # Seconds the worker process spent unpickling the batch (moving data, not computing).
    load_seconds: float = 0.0
    # When the first task started (time.time()).
    started: float = 0.0
    # What the tasks wrote to sys.stdout / sys.stderr and logged, in a worker process.
    stdout: str = ""
    stderr: str = ""
    logs: list[dict[str, Any]] = field(default_factory=list)
    # The worker could not unmap a per-call copy of a large argument once the batch was
    # done: something (a task's global, a result) still holds a view of it, so the caller
    # must not write the next call's data into that segment.
    pinned: bool = False


_HOST: list[str] = []
# Set in a worker process once it runs its first batch.
_IN_WORKER_PROCESS: list[bool] = []


def in_worker_process() -> bool:
    """Whether this process is a worker of parlay's (in a pool or a cluster)."""
    return bool(_IN_WORKER_PROCESS)


def host_name() -> str:
    """This machine's host name (looked up once per process)."""
    if not _HOST:
        _HOST.append(socket.gethostname())
    return _HOST[0]


_PLACE = threading.local()  # this thread's (worker name, pid, thread name)


def _place() -> tuple[str, int, str]:
    pid = os.getpid()
    place: tuple[str, int, str] | None = getattr(_PLACE, "value", None)
    if place is None or place[1] != pid:  # a forked child gets the parent's thread-local
        thread = threading.current_thread()
        name = (
            f"pid {pid}" if thread is threading.main_thread() else f"pid {pid} thread {thread.name}"
        )
        place = _PLACE.value = (name, pid, thread.name)
    return place


def _placed(result: BatchResult) -> BatchResult:
    """Fill in where `result` was made: this host, process and thread."""
    result.worker, result.pid, result.thread = _place()
    result.host = host_name()
    return result


def run_batch(batch: Batch, *, remote: bool = False) -> BatchResult:
    """Run the tasks of `batch` under its context; catch and record each task's error.

    With ``remote=True`` (the worker is another process) each error carries its
    formatted traceback as text, since traceback objects do not pickle, and the worker's
    native thread pools are limited to the tasks' budget.
    """
    native_threads = batch.context.native_threads
    if remote and native_threads is not None:
        _budget.BLAS.keep(native_threads)
    nesting_token = _budget.set_nesting(batch.context.nesting)
    layers_token = _config.set_layers(batch.context.layers)
    stamps: list[float] | None = [] if batch.context.timing else None
    captured = _output.Captured(batch.context.log_level) if remote else None
    started = time.time()
    t0 = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with (
            _joblib_bridge(batch.context),
            _warnings_caught(caught, remote),
            _output.capturing(captured),
            _thread_limits(batch.context, remote),
        ):
            values, errors, cancelled = _run_tasks(batch, remote, stamps)
    finally:
        _config.reset_layers(layers_token)
        _budget.reset_nesting(nesting_token)
    result = _placed(BatchResult(values, errors, time.perf_counter() - t0, "", cancelled))
    result.stamps = stamps
    result.started = started
    # The text, not the Warning object: it always pickles.
    result.warnings = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
    if captured is not None:
        result.stdout, result.stderr = captured.stdout(), captured.stderr()
        result.logs = captured.logs
    return result


@contextlib.contextmanager
def _warnings_caught(caught: list[warnings.WarningMessage], remote: bool) -> Iterator[None]:
    """In a worker process, record the tasks' warnings, to emit them again in the caller.

    (In the caller's own threads they are emitted where they happen.) A worker process
    runs one batch at a time, so catching the process-wide warnings is safe there.
    """
    if not remote:
        yield
        return
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        yield
    caught.extend(recorded)


def _thread_limits(context: WorkerContext, remote: bool) -> contextlib.AbstractContextManager[Any]:
    """A thread worker of the caller's process: limit its own native pools to the budget."""
    if remote or not context.in_worker or context.native_threads is None:
        return contextlib.nullcontext()
    return _budget.BLAS.held(context.native_threads)


def emit_warnings(result: BatchResult) -> None:
    """In the caller: warn again each warning a worker process recorded, at its origin."""
    for message, category, filename, lineno in result.warnings:
        warnings.warn_explicit(message, category, filename, lineno)


def deliver(result: BatchResult) -> None:
    """In the caller: replay what a worker process's tasks printed, logged and warned."""
    if result.stdout or result.stderr or result.logs:
        label = result.worker if result.host == host_name() else f"{result.host} {result.worker}"
        _output.replay(label, result.stdout, result.stderr, result.logs)
    if result.warnings:
        emit_warnings(result)


def function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a task's function (what timelines and messages show)."""
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else name


def report(batch: Batch, result: BatchResult, submitted: float) -> BatchReport:
    """In the caller: what instruments are told of a batch that came back."""
    if isinstance(batch.func, list):
        functions = tuple(function_name(f) for f in batch.func[: len(result.values)])
    else:
        functions = (function_name(batch.func),)
    return BatchReport(
        batch.start,
        len(result.values),
        functions,
        result.worker,
        result.host,
        result.pid,
        result.thread,
        submitted,
        time.time(),
        result.elapsed,
        result.load_seconds,
        frozenset(result.errors),
        tuple(result.stamps) if result.stamps is not None else None,
        result.started,
    )


def _joblib_bridge(context: WorkerContext) -> contextlib.AbstractContextManager[Any]:
    """Route the tasks' joblib calls to parlay, in a worker where joblib is loaded."""
    if not context.in_worker or "joblib" not in sys.modules:
        return contextlib.nullcontext()
    from .joblib import activated

    return activated()


def _run_tasks(
    batch: Batch, remote: bool, stamps: list[float] | None
) -> tuple[list[Any], dict[int, str | None], bool]:
    values: list[Any] = []
    errors: dict[int, str | None] = {}
    append = values.append
    shared_func = None if isinstance(batch.func, list) else batch.func
    all_kwargs = batch.kwargs
    cancel = batch.cancel
    # Timing costs a clock read and an append a task; the untimed loop pays neither.
    stamp = stamps.append if stamps is not None else None
    clock = time.time
    if stamp is not None:
        stamp(clock())
    # In a worker process, SystemExit and the like are the task's errors too (and travel
    # back to the caller); in the caller's own threads they keep their meaning.
    catch = BaseException if remote else Exception
    for offset, args in enumerate(batch.args):
        if cancel is not None and cancel.is_set():
            return values, errors, True
        func = shared_func if shared_func is not None else batch.func_of(offset)
        try:
            if all_kwargs is None:
                append(func(*args))
            else:
                append(func(*args, **all_kwargs[offset]))
        except KeyboardInterrupt:
            raise
        except catch as exc:
            append(exc)
            errors[offset] = "".join(traceback.format_exception(exc)) if remote else None
            if batch.stop_on_error:
                if stamp is not None:
                    stamp(clock())
                break
        if stamp is not None:
            stamp(clock())
    return values, errors, False


# -- crossing a process boundary -----------------------------------------------------------


def describe_task(func: Callable[..., Any], index: int) -> str:
    """Name a task for messages: ``task 7 (mymodule.f)``."""
    return f"task {index} ({function_name(func)})"


def _sendable(batch: Batch) -> Batch:
    # Carried config layers drop backend parameters: they may hold live objects (a
    # client, a connection) that belong to the caller's process.
    # Instruments stay with the caller too: events are the caller's.
    layers = tuple(
        replace(
            layer,
            backend_params={},
            values={k: v for k, v in layer.values.items() if k != "instruments"},
        )
        for layer in batch.context.layers
    )
    return replace(batch, cancel=None, shares=None, context=replace(batch.context, layers=layers))


def pack(batch: Batch) -> bytes:
    """Pickle `batch` for a worker in another process, naming the task that fails to pickle."""
    try:
        return _dumps(_sendable(batch))
    except Exception as exc:
        raise _first_unpicklable(batch, exc) from exc


def pack_sharing(
    batch: Batch, put: Callable[[object], Any], *, local: bool = False
) -> tuple[bytes, list[Any]]:
    """:func:`pack`, with the call's large arrays sent apart by `put` (see ``_sharing``)."""
    # Without a per-call store (max_nbytes=None) only parlay.share() arrays are left out.
    shares = batch.shares if batch.shares is not None else CallShares(sys.maxsize)
    try:
        return dumps_sharing(_sendable(batch), shares, put, local=local)
    except Exception as exc:
        raise _first_unpicklable(batch, exc) from exc


def _first_unpicklable(batch: Batch, exc: BaseException) -> SerializationError:
    for offset, index in enumerate(batch.indices):
        parts = (batch.func_of(offset), batch.args[offset], batch.kwargs_of(offset))
        for what, part in zip(("function", "arguments", "keyword arguments"), parts, strict=True):
            try:
                _dumps(part)
            except Exception as part_exc:
                task = describe_task(batch.func_of(offset), index)
                return SerializationError(
                    f"{task} cannot be sent to a worker process: its {what} could not be "
                    f"pickled ({type(part_exc).__name__}: {part_exc}). Pass picklable "
                    "objects, or use backend='threads', which does not pickle."
                )
    return SerializationError(f"a batch of tasks could not be pickled: {exc}")


def run_packed(payload: bytes, *shared: Any) -> bytes:
    """Worker-process entry point: unpickle a batch, run it, pickle its result.

    `shared` are the values of the large arguments left out of the payload, in order.
    """
    t0 = time.perf_counter()
    if not _IN_WORKER_PROCESS:
        _IN_WORKER_PROCESS.append(True)
    copies: list[Any] = []
    try:
        if shared:
            values = resolve(shared)
            copies = mappings_of_copies(shared, values)
            batch: Batch = loads_shared(payload, values)
            del values
        else:
            batch = _loads(payload)
    except BaseException as exc:
        tb = "".join(traceback.format_exception(exc))
        failure = SerializationError(
            f"a batch of tasks could not be unpickled in the worker process (pid "
            f"{os.getpid()}): {type(exc).__name__}: {exc}. Check that the modules the "
            "tasks use can be imported in a fresh process."
        )
        return _dumps(_placed(BatchResult([], fatal=failure, fatal_tb=tb)))
    load_seconds = time.perf_counter() - t0
    result = run_batch(batch, remote=True)
    result.load_seconds = load_seconds
    if copies:
        batch = batch.skeleton()  # without the arguments, which hold the mappings
        result.pinned = not unmapped(copies)
    try:
        return _dumps(result)
    except Exception:
        return _dumps(_picklable_result(batch, result))


def _picklable_result(batch: Batch, result: BatchResult) -> BatchResult:
    """Replace every value or exception that fails to pickle with an error naming it."""
    values = list(result.values)
    errors = dict(result.errors)
    for offset, value in enumerate(values):
        try:
            _dumps(value)
        except Exception as exc:
            task = describe_task(batch.func_of(offset), batch.start + offset)
            what = "raised an exception" if offset in errors else "returned a value"
            values[offset] = SerializationError(
                f"{task} {what} that could not be pickled to send it back from the worker "
                f"({type(value).__name__}: {type(exc).__name__}: {exc})"
            )
            errors[offset] = errors.get(offset) or "".join(traceback.format_exception(exc))
            if batch.stop_on_error:
                del values[offset + 1 :]
                break
    return replace(result, values=values, errors=errors)


def unpack(data: bytes, batch: Batch) -> BatchResult:
    """Unpickle a worker's result in the caller, naming the tasks if that fails."""
    try:
        result: BatchResult = _loads(data)
    except Exception as exc:
        first, last = batch.start, batch.start + len(batch) - 1
        raise SerializationError(
            f"the results of tasks {first}..{last} could not be unpickled in the caller "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if result.fatal is not None and result.fatal_tb is not None:
        result.fatal.__cause__ = RemoteTraceback(result.fatal_tb)
    for offset, tb in result.errors.items():
        if tb is not None:
            error = result.values[offset]
            if isinstance(error, BaseException) and error.__cause__ is None:
                error.__cause__ = RemoteTraceback(tb)
    return result


def batch_of(
    start: int,
    funcs: Sequence[Callable[..., Any]],
    args: list[tuple[Any, ...]],
    kwargs: Sequence[dict[str, Any] | None],
    context: WorkerContext,
    stop_on_error: bool,
    cancel: threading.Event | None,
    shares: CallShares | None = None,
) -> Batch:
    """Build a batch from its tasks' columns, storing a function shared by all once.

    ``kwargs`` may hold None for no keyword arguments; when no task has any, the batch
    keeps none (``Batch.kwargs`` is None).
    """
    first = funcs[0]
    shared = all(map(operator.is_, funcs, itertools.repeat(first)))
    return Batch(
        start,
        first if shared else list(funcs),
        args,
        [kw or NO_KWARGS for kw in kwargs] if any(kwargs) else None,
        context,
        stop_on_error,
        cancel,
        shares,
    )
