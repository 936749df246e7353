"""A pool of worker processes (``backend="processes"``), on loky's ProcessPoolExecutor.

loky gives spawn-safe workers that start in milliseconds, cloudpickle for functions
defined in ``__main__`` or a notebook, and workers that can be killed. parlay keeps one
executor of its own for its top-level calls, resized to what each call wants (see
:class:`_Pool`), rather than loky's process-wide reusable one, so that another user of
loky and parlay never resize each other's pool (joblib has its own copy of loky).

Batches are pickled here (:func:`parlay._worker.pack`) and unpickled by parlay in the
worker, so that each serialization failure names its task.
"""

from __future__ import annotations

import collections
import functools
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


# A new executor's call queue holds this many workers' batches, at least: the executor
# grows up to it without being replaced (loky sizes the queue once, when it starts).
_CAPACITY = 64


@final
class _Pool:
    """A loky executor that grows and shrinks to the size its sessions want.

    Every top-level session of the backend, whatever its size, shares one pool (as
    joblib's loky backend resizes one executor): a pool per size left 63 workers alive
    after a forest was fit with n_jobs 2, 3, 8, 16 and 32 in turn. A nested call's
    session has a pool of its own, closed with it.

    The executor grows at once when a session wants more workers than it has (batches
    already running go on) and shrinks to what a session wants when no batch of any
    session is on it (the extra workers exit, the others stay warm). Each session runs
    at most its own ``n_workers`` batches on it at once (see :class:`ProcessesSession`),
    so a call never uses more workers than it was given while a larger call from another
    thread has the pool grown. Workers started when the pool grows get the thread
    environment of the session that grew it; each batch limits the native pools it
    finds loaded to its own budget anyway (``_budget.BLAS.keep``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: Any = None
        self._busy = 0  # batches of all sessions submitted to the executor, not yet done
        self._users = 0  # open sessions
        # Executors discarded because a worker died or was killed, unlike those replaced
        # to grow: a call whose batches went to one of these is failing.
        self._dead: weakref.WeakSet[Any] = weakref.WeakSet()

    def use(self) -> _Pool:
        with self._lock:
            self._users += 1
        return self

    def executor(self, n_workers: int, budget: int, *, shrink: bool) -> Any:
        """The executor, sized for a session of `n_workers`, counting a batch as started.

        `shrink` is False where a session's queued batch starts: shrinking waits for
        loky's manager thread, which runs the callback that starts it.
        """
        with self._lock:
            executor = self._executor
            if executor is None or n_workers > executor.queue_size // 2:
                if executor is not None:
                    executor.shutdown(wait=False)  # its batches finish; its workers exit
                executor = self._executor = self._new_executor(n_workers, budget)
            elif n_workers > executor._max_workers:
                # Grow now: loky starts the missing workers at the next submit.
                with executor._processes_management_lock:
                    executor._env = thread_env(budget)
                    executor._max_workers = n_workers
            elif (
                shrink
                and n_workers < executor._max_workers
                and self._busy == 0
                and not executor._pending_work_items
            ):
                # loky's resize: the extra workers exit, and it waits until they are gone
                # (a pool growing while they leave would count them as running). Nothing
                # of any session runs, and no callback of ours can wait on this lock.
                executor._resize(n_workers)
            self._busy += 1
            return executor

    @staticmethod
    def _new_executor(n_workers: int, budget: int) -> Any:
        from loky.reusable_executor import _ReusablePoolExecutor

        # Made for _CAPACITY workers (loky sizes its call queue from that), then set to
        # the size wanted before any worker starts.
        executor = _ReusablePoolExecutor(
            max_workers=max(n_workers, _CAPACITY),
            timeout=IDLE_WORKER_TIMEOUT,
            env=thread_env(budget),
            initializer=_count_private_memory,
        )
        executor._resize(n_workers)
        return executor

    def done(self) -> None:
        """A batch counted by :meth:`executor` has ended (or was never submitted)."""
        with self._lock:
            self._busy -= 1

    def is_dead(self, executor: Any) -> bool:
        return executor in self._dead

    def discard(self, executor: Any, *, kill: bool) -> None:
        """Stop using `executor` (broken, or its workers must be killed)."""
        with self._lock:
            self._dead.add(executor)
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, kill_workers=kill)

    def release(self) -> None:
        """A session is closed; the last one shuts the executor down."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)


_SHARED: _Pool | None = None
_SHARED_LOCK = threading.Lock()


def _shared_pool() -> _Pool:
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = _Pool()
        return _SHARED.use()


@final
class _PoolFuture(BridgedFuture):
    """A batch's future: waiting for a slot of its session, then running on an executor."""

    def __init__(self, session: ProcessesSession, batch: Batch, payload: tuple[Any, ...]) -> None:
        super().__init__(None, self._cancel_waiting)
        self.session = session
        self.batch = batch
        self.payload: tuple[Any, ...] | None = payload
        self.executor: Any = None

    def _cancel_waiting(self) -> bool:
        if self.session.withdraw(self):
            return True
        source = self.followed
        return False if source is None else source.cancel()


@final
class ProcessesSession(Session):
    """Runs at most ``n_workers`` batches at once on a pool; the rest wait their turn.

    A pool replaced after a worker died or was killed starts afresh; a call with a batch
    on the old one fails its later batches instead of moving them (see :meth:`_start`).
    """

    def __init__(self, n_workers: int, budget: int, pool: _Pool) -> None:
        self.n_workers = n_workers
        self._budget = budget
        self._pool = pool
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque[_PoolFuture] = collections.deque()
        self._closed = False
        # The executor each running call's first batch went to, by the call's cancel event.
        self._homes: weakref.WeakKeyDictionary[threading.Event, weakref.ref[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def submit(self, batch: Batch) -> Future[BatchResult]:
        # Large arrays go through shared memory, once per call (see _sharing).
        payload, shared = batch.pack_sharing(share_locally, local=True)
        target = _PoolFuture(self, batch, (payload, *shared))
        with self._lock:
            if self._running >= self.n_workers:
                self._waiting.append(target)
                return target
            self._running += 1
        self._start(target, shrink=True)
        return target

    def withdraw(self, target: _PoolFuture) -> bool:
        """Take a batch that has not started out of the queue; False if it is not there."""
        with self._lock:
            try:
                self._waiting.remove(target)
            except ValueError:
                return False
            return True

    def _start(self, target: _PoolFuture, *, shrink: bool = False) -> None:
        """Submit a batch that has a slot of the session; errors go to its future."""
        try:
            self._submit(target, shrink=shrink)
        except Exception as exc:  # an engine's error (starting a worker), or at exit
            self._fail(target, exc)

    def _submit(self, target: _PoolFuture, *, shrink: bool) -> None:
        from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

        batch, payload = target.batch, target.payload
        target.payload = None
        assert payload is not None
        call = batch.cancel  # one per call
        with self._lock:
            home_ref = None if call is None else self._homes.get(call)
        home = None if home_ref is None else home_ref()
        executor: Any = None
        for attempt in (1, 2):
            executor = self._pool.executor(self.n_workers, self._budget, shrink=shrink)
            if home is not None and executor is not home and self._pool.is_dead(home):
                # This call's pool broke (a worker died) and another replaced it: the
                # call is failing, and its later batches do not move to the new pool,
                # where one that crashed too would take down other calls' tasks (and
                # killing the call's work there would too). They fail with the old pool.
                self._pool.done()
                self._fail(target, self._map_error(BrokenProcessPool(), batch, home))
                return
            try:
                source = executor.submit(run_packed, *payload)
                break
            except Exception as exc:
                self._pool.done()
                if not isinstance(exc, BrokenProcessPool | ShutdownExecutorError):
                    raise
                # The pool broke (a worker died): start a new one.
                self._pool.discard(executor, kill=True)
                if attempt == 2:
                    self._fail(target, self._map_error(exc, batch, executor))
                    return
        if call is not None and home_ref is None:
            with self._lock:
                # A weak reference: the pool's own records of the call's batches hold
                # the call's event, and a strong one here would keep both, and the
                # call's arguments, alive for good.
                self._homes[call] = weakref.ref(executor)
        target.executor = executor
        source.add_done_callback(self._ended)
        target.follow(
            source,
            lambda data: unpack(data, batch),
            lambda error: self._map_error(error, batch, executor),
        )

    def _fail(self, target: _PoolFuture, error: BaseException) -> None:
        target.settle(functools.partial(_raise, error))
        self._next()

    def _ended(self, _source: Future[Any]) -> None:
        self._pool.done()
        self._next()

    def _next(self) -> None:
        """A batch of the session has ended: start the next one waiting, if any."""
        with self._lock:
            if not self._waiting or self._closed:
                self._running -= 1
                return
            target = self._waiting.popleft()
        self._start(target)

    def _map_error(self, error: BaseException, batch: Batch, executor: Any) -> BaseException:
        from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

        if isinstance(error, BrokenProcessPool | ShutdownExecutorError):
            self._pool.discard(executor, kill=True)
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
            if executor is not None:
                logger.debug("killing the workers of %s", self.describe())
                self._pool.discard(executor, kill=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
        for target in waiting:
            target.source_cancelled()  # never started: nothing else would settle it
        self._pool.release()

    def describe(self) -> str:
        return f"processes ({self.n_workers} loky workers)"


def _raise(error: BaseException) -> Any:
    raise error


@final
class ProcessesBackend(Backend):
    """Worker processes: true parallelism for Python code that holds the GIL."""

    name = "processes"
    capabilities = Capabilities(
        shared_memory=False, separate_processes=True, can_kill=True, batch_seconds=0.05
    )

    def open(self, decision: Decision) -> Session:
        # Top-level calls share one pool; a nested call's pool is its own (closed with it).
        pool = _shared_pool() if decision.nesting_level == 0 else _Pool().use()
        return ProcessesSession(decision.n_jobs, decision.inner_budget, pool)
