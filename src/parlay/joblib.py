"""The joblib bridge: joblib's ``Parallel``, and so every scikit-learn ``n_jobs``, on parlay.

Importing this module (it imports joblib) registers a joblib backend named ``"parlay"``.
You rarely need to: ``parlay.parallel_config(...)`` activates the bridge by itself, in its
thread and in the tasks parlay runs, so that inside it::

    with parlay.parallel_config(backend="dask"):
        GridSearchCV(RandomForestClassifier(n_jobs=-1), grid, n_jobs=-1).fit(X, y)

every joblib call goes through parlay's negotiation: scikit-learn's ``prefer="threads"`` and
``require="sharedmem"`` are the author's hints, the context is the user's resources, and a
nested call inside a task gets that task's share of the cores. ``parlay.explain_last()``
shows the decision taken for the latest call of the thread, joblib's included.

Each joblib batch (joblib's ``BatchedCalls``) is one parlay task; joblib keeps its own
ordering, generators, timeouts and error handling, and parlay provides the pools, the
placement and the budget.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Final

from joblib import parallel_config as _joblib_parallel_config
from joblib import register_parallel_backend
from joblib._parallel_backends import ParallelBackendBase
from joblib.externals.loky.process_executor import TerminatedWorkerError

from . import _backends, _budget, _config
from ._api import Parallel, remember_decision, task_context
from ._backends._base import Capabilities, Session
from ._batching import BatchSizer
from ._exceptions import SerializationError, WorkerDiedError
from ._instrument import CallInfo, Dispatcher
from ._negotiate import Decision
from ._runner import native_hold
from ._sharing import CallShares
from ._worker import Batch, BatchResult, WorkerContext, batch_of, deliver, function_name, report

__all__ = ["JoblibSerializationError", "JoblibWorkerDiedError", "ParlayBackend", "activated"]

_ONE_MIB = 1 << 20

# joblib turns a call's n_jobs=None, when its own context sets no n_jobs either, into
# the backend's ``default_n_jobs`` before the backend sees the call. The bridge's default
# is this value, which no one passes, so that configure() knows n_jobs was left unset and
# parlay's side decides it (parallel_config, PARLAY_N_JOBS, the whole of a cluster). Were
# it to reach another joblib backend, it would count as 1 worker, joblib's own default
# (its arithmetic gives max(cores + 1 + n_jobs, 1)).
UNSET_N_JOBS: Final = -(1 << 62)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _CallState:
    """What one joblib call (between configure and terminate) holds."""

    decision: Decision
    session: Session
    private: bool
    context: WorkerContext
    sizer: BatchSizer
    cancel: threading.Event = field(default_factory=threading.Event)
    futures: set[Future[BatchResult]] = field(default_factory=set)
    events: Dispatcher | None = None
    info: CallInfo | None = None
    # Large arrays the call's batches carry, sent to the engine once for the call.
    shares: CallShares | None = None
    n_dispatched: int = 0  # joblib tasks submitted so far
    native_hold: int | None = None  # the native-thread limit held for the call, if any
    # Runs joblib's completion callbacks when the workers are this process's threads.
    deliveries: _Deliveries | None = None


class _Deliveries:
    """A thread that runs joblib's completion callbacks, in order, for one call.

    A future's callbacks run in the thread that completes it: on thread workers, the
    worker itself, which then dispatched joblib's next batch (a few hundred µs of
    Python) before taking the one already queued. joblib's own thread pool hands its
    callbacks to a thread of their own too; measured on W5 (200 batches), the workers
    waited 38 ms each between batches.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], None], Any] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(
            target=self._run, name="parlay-joblib-callbacks", daemon=True
        )
        self._thread.start()

    def put(self, callback: Callable[[Any], None], future: Any) -> None:
        self._queue.put((callback, future))

    def close(self) -> None:
        """Stop once the callbacks already queued have run."""
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            callback, future = item
            try:
                callback(future)
            except BaseException:  # joblib's callbacks handle their errors; log the rest
                logger.exception("joblib's completion callback failed")


class JoblibWorkerDiedError(WorkerDiedError, TerminatedWorkerError):  # type: ignore[misc]
    """A worker died under a joblib call: parlay's error, and joblib's (loky's) own, so
    that ``except TerminatedWorkerError`` written for joblib still catches it."""


class JoblibSerializationError(SerializationError, pickle.PicklingError):
    """A joblib batch could not be pickled or unpickled: parlay's error, and the
    ``pickle.PicklingError`` joblib raises, so that code written for joblib still
    catches it."""


def _as_joblibs(error: BaseException) -> BaseException:
    """`error` as an instance of what joblib would raise too, where parlay's differs."""
    bridged: BaseException
    if isinstance(error, WorkerDiedError) and not isinstance(error, TerminatedWorkerError):
        bridged = JoblibWorkerDiedError(str(error), tasks=error.tasks, exit_codes=error.exit_codes)
    elif isinstance(error, SerializationError) and not isinstance(error, pickle.PicklingError):
        bridged = JoblibSerializationError(str(error))
    else:
        return error
    bridged.__cause__ = error.__cause__
    for note in getattr(error, "__notes__", ()):
        bridged.add_note(note)
    return bridged


class ParlayBackend(ParallelBackendBase):  # type: ignore[misc]
    """joblib backend that runs joblib's batches on parlay's negotiated backend.

    It declares shared-memory support so that joblib hands it ``require="sharedmem"``
    calls instead of swapping in its own threading backend: parlay decides, and gives
    those calls threads.
    """

    supports_retrieve_callback = True
    supports_sharedmem = True
    supports_inner_max_num_threads = True
    uses_threads = False
    default_n_jobs = UNSET_N_JOBS

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        # joblib shares one backend instance between the calls of a context (a managed
        # `with Parallel() as p` and the calls made inside its tasks on threads): each
        # call's state is kept on a stack, so an inner call never closes an outer pool.
        self._calls: list[_CallState] = []

    # -- joblib's contract --------------------------------------------------------------

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        front = Parallel(n_jobs=_unset_to_none(n_jobs), prefer=prefer, require=require)  # type: ignore[arg-type]
        decision, backend = front._negotiate()
        remember_decision(decision)
        logger.debug("joblib call from %s: %s", _call_site(), decision)
        if decision.n_jobs == 1 and not getattr(parallel, "_managed_backend", False):
            # joblib runs a one-worker call itself, in the caller, and never calls
            # terminate() for it: keep no state (it would outlive the call and answer
            # effective_n_jobs() for later calls) and report no call that never ends.
            return 1
        private = decision.nesting_level > 0
        session = _backends.acquire_session(backend, decision, cached=not private)
        caps = backend.capabilities
        context = task_context(decision, caps, via=" (via joblib)")
        events = front._instruments()
        if events is not None and not events.active:
            events = None
        if events is not None and events.task_times:
            context = replace(context, timing=True)
        state = _CallState(
            decision,
            session,
            private,
            context,
            BatchSizer(None, target=_batch_seconds(caps), n_workers=decision.n_jobs, timeout=None),
        )
        max_nbytes = _config.check_max_nbytes(backend_kwargs.get("max_nbytes", _ONE_MIB))
        if caps.separate_processes and max_nbytes is not None:
            folder = backend_kwargs.get("temp_folder")
            if folder is None:
                folder = _config.resolve("temp_folder", _config.UNSET, None).value
            state.shares = CallShares(max_nbytes, folder=_config.check_temp_folder(folder))
        if events is not None:
            state.events = events
            state.info = CallInfo(
                decision.backend, decision.n_jobs, None, decision.nesting_level, via="joblib"
            )
            events.emit("call_started", state.info)
        state.native_hold = native_hold(context, caps)
        if not caps.separate_processes and not caps.inline:
            state.deliveries = _Deliveries()
        if state.native_hold is not None:
            _budget.BLAS.acquire(state.native_hold)
        self._calls.append(state)
        return decision.n_jobs

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if self._calls:
            return self._calls[-1].decision.n_jobs
        return Parallel(n_jobs=_unset_to_none(n_jobs)).explain().n_jobs

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> Future[BatchResult]:
        state = self._state()
        # joblib's batch as the task's argument, so that the large arrays inside it
        # (scikit-learn's X and y) are found and sent once per call, not once per batch.
        batch = batch_of(
            0, [_run], [(func,)], [None], state.context, True, state.cancel, state.shares
        )
        submitted = time.time()
        try:
            future = state.session.submit(batch)
        except SerializationError as exc:
            raise _as_joblibs(exc) from exc.__cause__
        state.futures.add(future)
        future.add_done_callback(state.futures.discard)
        size = len(func) if hasattr(func, "__len__") else 1  # joblib tasks in the batch
        future.add_done_callback(functools.partial(_observe, state.sizer, size))
        if state.events is not None and state.events.wants("batch_finished"):
            # Number the joblib tasks in the order joblib dispatches them.
            first = state.n_dispatched
            state.n_dispatched += size
            report_it = functools.partial(_report, state, batch, first, size, submitted)
            future.add_done_callback(report_it)
        if callback is not None:
            if state.deliveries is not None:
                future.add_done_callback(functools.partial(state.deliveries.put, callback))
            else:
                future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future[BatchResult]) -> Any:
        try:
            result = future.result()
        except (WorkerDiedError, SerializationError) as exc:
            raise _as_joblibs(exc) from exc.__cause__
        deliver(result)
        if result.fatal is not None:
            raise _as_joblibs(result.fatal)
        if result.errors:
            raise result.values[0]  # joblib names the task and keeps the traceback
        return result.values[0]

    def compute_batch_size(self) -> int:
        return self._state().sizer.next_size(None) if self._calls else 1

    def batch_completed(self, batch_size: int, duration: float) -> None:
        # joblib's duration runs from dispatch, queueing included: batch sizes come from
        # the computing time the worker measured instead (see _observe).
        pass

    def abort_everything(self, ensure_ready: bool = True) -> None:
        if not self._calls:
            return
        state = self._calls[-1]
        state.cancel.set()
        # joblib aborts a call on a task's error and on its timeout. A call with a timeout
        # kills its running batches, where the engine can, as parlay's own calls do at a
        # timeout (and joblib's loky backend at every abort): a stuck task would hold its
        # worker, and every later call would wait for it. Otherwise they finish unseen.
        kill = getattr(self.parallel, "timeout", None) is not None
        state.session.cancel(list(state.futures), kill=kill)
        # joblib goes on using this instance after an abort when ensure_ready is set.
        state.cancel = threading.Event()

    def terminate(self) -> None:
        if not self._calls:
            return
        state = self._calls.pop()
        if state.deliveries is not None:
            state.deliveries.close()
        if state.native_hold is not None:
            _budget.BLAS.release(state.native_hold)
        if state.shares is not None:
            state.shares.clear()
        if state.events is not None:
            state.events.emit("call_finished", state.info, None)
        if state.private:
            state.session.close()

    def get_nested_backend(self) -> tuple[ParlayBackend, None]:
        level = (self.nesting_level or 0) + 1
        return ParlayBackend(level, self.inner_max_num_threads), None

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        # While joblib waits for results, a nested call on a reentrant engine (Dask)
        # leaves its worker slot, as parlay's own calls do.
        if not self._calls:
            yield
            return
        with self._calls[-1].session.blocking():
            yield

    def _state(self) -> _CallState:
        if not self._calls:
            raise RuntimeError("the parlay joblib backend was used before configure()")
        return self._calls[-1]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled into joblib's batches as the nested backend: only the level travels.
        return (ParlayBackend, (self.nesting_level, self.inner_max_num_threads))


# A joblib batch carries its tasks' whole arguments (scikit-learn's X and y under the
# size at which they are shared, the estimator): batches sent to other processes aim at
# joblib's own minimum duration, which measured here halves the batches of a forest's fit
# for RandomForest (W5) on processes, and with them the pickling.
_BRIDGE_BATCH_SECONDS = 0.2


def _batch_seconds(caps: Capabilities) -> float:
    if caps.separate_processes:
        return max(caps.batch_seconds, _BRIDGE_BATCH_SECONDS)
    return caps.batch_seconds


def _observe(sizer: BatchSizer, size: int, future: Future[BatchResult]) -> None:
    """Feed the call's batch sizer with a finished joblib batch's computing time."""
    if not future.cancelled() and future.exception() is None:
        sizer.observe(size, future.result().elapsed)


def _unset_to_none(n_jobs: int | None) -> int | None:
    return None if n_jobs == UNSET_N_JOBS else n_jobs


def _run(batched: Callable[[], Any]) -> Any:
    """Run one joblib batch (a ``BatchedCalls``) in a worker."""
    return batched()


def _report(
    state: _CallState,
    batch: Batch,
    first: int,
    n_tasks: int,
    submitted: float,
    future: Future[BatchResult],
) -> None:
    """Tell the call's instruments of a joblib batch that came back (one parlay task)."""
    if future.cancelled() or future.exception() is not None or state.events is None:
        return
    result = future.result()
    if result.fatal is not None:
        return
    batched = batch.args[0][0]
    # joblib's BatchedCalls: name the joblib tasks inside by the first one.
    items = getattr(batched, "items", None)
    head = items[0][0] if items else batched
    # scikit-learn wraps each task's function (utils.parallel._FuncWrapper).
    name = function_name(getattr(head, "function", head))
    done = replace(
        report(batch, result, submitted), first=first, n_tasks=n_tasks, functions=(name,)
    )
    state.events.emit("batch_finished", state.info, done)


def _call_site() -> str:
    import sys

    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("joblib", "parlay", "sklearn.utils.parallel")
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"


register_parallel_backend("parlay", ParlayBackend)


def activated() -> contextlib.AbstractContextManager[Any]:
    """joblib's ``parallel_config`` that routes joblib calls to parlay, for this thread."""
    level = _budget.current_nesting().level
    config: contextlib.AbstractContextManager[Any] = _joblib_parallel_config(
        backend=ParlayBackend(nesting_level=level)
    )
    return config
