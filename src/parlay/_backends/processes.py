"""A pool of worker processes (``backend="processes"``), on loky's ProcessPoolExecutor.

loky gives spawn-safe workers that start in milliseconds, cloudpickle for functions
defined in ``__main__`` or a notebook, and workers that can be killed. parlay keeps its
own executor per pool size rather than loky's process-wide reusable one, so that joblib
(which uses that one) and parlay never resize each other's pool.

Batches are pickled here (:func:`parlay._worker.pack`) and unpickled by parlay in the
worker, so that each serialization failure names its task.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, final

from .._budget import thread_env
from .._exceptions import WorkerDiedError
from .._sharing import share_locally
from .._worker import run_packed, unpack
from ._base import Backend, BridgedFuture, Capabilities, Session

if TYPE_CHECKING:
    from .._negotiate import Decision
    from .._worker import Batch, BatchResult

logger = logging.getLogger(__name__)

# Idle workers exit after this many seconds and are started again on demand.
IDLE_WORKER_TIMEOUT = 300


_EXIT_CODES = re.compile(r"exit codes of the workers are (\{[^}]*\})")


def _describe_exit(exc: BaseException) -> str | None:
    match = _EXIT_CODES.search(str(exc))
    return match.group(1) if match else None


def _private_memory(pid: int, force_gc: bool = False) -> int:
    import gc

    import psutil

    if force_gc:
        gc.collect()
    info = psutil.Process(pid).memory_info()
    return int(info.rss - getattr(info, "shared", 0))


def _count_private_memory() -> None:
    """In a worker: make loky's leak check count private memory only.

    loky restarts a worker whose resident size grew by 300 MB since its first task,
    taking it for a leak. A worker that maps a large shared array (a per-call copy,
    or a parlay.share array it keeps mapped across calls) grows that much without
    owning a byte of it, and was restarted every second, mapping lost and start-up
    paid again. Pages of shared memory and files are left out of the count.
    """
    import loky.process_executor as executor

    if getattr(executor, "_USE_PSUTIL", False) and hasattr(executor, "_get_memory_usage"):
        executor._get_memory_usage = _private_memory


@final
class _PoolFuture(BridgedFuture):
    """A batch's future, which knows the executor (pool) that runs it."""

    def __init__(self, source: Future[Any], executor: Any) -> None:
        super().__init__(source, source.cancel)
        self.executor = executor


@final
class ProcessesSession(Session):
    """A loky executor, replaced by a fresh one after a worker dies or is killed."""

    def __init__(self, n_workers: int, budget: int) -> None:
        self.n_workers = n_workers
        self._budget = budget
        self._lock = threading.Lock()
        self._executor: Any = None
        # The pool each running call's first batch went to, by the call's cancel event.
        self._homes: weakref.WeakKeyDictionary[threading.Event, weakref.ref[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def _live_executor(self) -> Any:
        with self._lock:
            if self._executor is None:
                from loky import ProcessPoolExecutor

                self._executor = ProcessPoolExecutor(
                    max_workers=self.n_workers,
                    timeout=IDLE_WORKER_TIMEOUT,
                    env=thread_env(self._budget),
                    initializer=_count_private_memory,
                )
            return self._executor

    def _discard(self, executor: Any, *, kill: bool) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=kill)

    def submit(self, batch: Batch) -> Future[BatchResult]:
        from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

        # Large arrays go through shared memory, once per call (see _sharing).
        payload, shared = batch.pack_sharing(share_locally, local=True)
        call = batch.cancel  # one per call
        with self._lock:
            home_ref = None if call is None else self._homes.get(call)
        home = None if home_ref is None else home_ref()
        for attempt in (1, 2):
            executor = self._live_executor()
            if home_ref is not None and executor is not home:
                # This call's pool broke (a worker died) and another replaced it: the
                # call is failing, and its later batches do not move to the new pool,
                # where one that crashed too would take down other calls' tasks (and
                # killing the call's work there would too). They fail with the old pool.
                failed: Future[BatchResult] = Future()
                failed.set_exception(self._map_error(BrokenProcessPool(), batch, home))
                return failed
            try:
                source = executor.submit(run_packed, payload, *shared)
                break
            except (BrokenProcessPool, ShutdownExecutorError):
                # The pool broke (a worker died): start a new one.
                self._discard(executor, kill=True)
                if attempt == 2:
                    raise
        if call is not None and home_ref is None:
            with self._lock:
                # A weak reference: the pool's own records of the call's batches hold
                # the call's event, and a strong one here would keep both, and the
                # call's arguments, alive for good.
                self._homes[call] = weakref.ref(executor)
        target = _PoolFuture(source, executor)
        target.follow(
            source,
            lambda data: unpack(data, batch),
            lambda error: self._map_error(error, batch, executor),
        )
        return target

    def _map_error(self, error: BaseException, batch: Batch, executor: Any) -> BaseException:
        from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

        if isinstance(error, BrokenProcessPool | ShutdownExecutorError):
            self._discard(executor, kill=True)
            codes = _describe_exit(error)
            first, last = batch.start, batch.start + len(batch) - 1
            cause = f"exit codes {codes}" if codes else "the pool was shut down"
            mapped = WorkerDiedError(
                f"a worker process died while tasks {first}..{last} were running or "
                f"queued ({cause}). A task may have crashed the interpreter, called "
                "os._exit(), been killed by a signal or run out of memory. The pool has "
                "been replaced: the next call works.",
                tasks=tuple(batch.indices),
                exit_codes=codes,
            )
            mapped.__cause__ = error
            return mapped
        return error

    def cancel(self, futures: Iterable[Future[BatchResult]], *, kill: bool) -> None:
        running = [future for future in futures if not future.cancel() and not future.done()]
        if not kill:
            return
        # Kill the pools that run these batches: usually the current one, but a call whose
        # pool broke mid-call has its later batches on the pool that replaced it.
        pools = {id(f.executor): f.executor for f in running if isinstance(f, _PoolFuture)}
        for executor in pools.values():
            logger.debug("killing the workers of %s", self.describe())
            self._discard(executor, kill=True)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)

    def describe(self) -> str:
        return f"processes ({self.n_workers} loky workers)"


@final
class ProcessesBackend(Backend):
    """Worker processes: true parallelism for Python code that holds the GIL."""

    name = "processes"
    capabilities = Capabilities(
        shared_memory=False, separate_processes=True, can_kill=True, batch_seconds=0.05
    )

    def open(self, decision: Decision) -> Session:
        return ProcessesSession(decision.n_jobs, decision.inner_budget)
