"""The dispatch loop of one call: batches out, results, errors and timeouts back.

::

    caller's thread (the only one that touches the task iterator and the call's state)
    ──────────────────────────────────────────────────────────────────────────────────
      tasks ──► _take() validates, BatchSizer sizes ──► batch_of() ──► session.submit()
                                                                          │ Future
      in-flight: {seq: _InFlight(batch, future, started)}  ◄──────────────┘
            ▲                                                             │
            │ seq                                                         ▼
      done queue (SimpleQueue) ◄── future.add_done_callback ◄── worker (thread / process /
            │                      (runs in the engine's thread)           inline) runs
            ▼                                                              run_batch()
      _outcomes(): pop the finished batch, feed BatchSizer, refill up to pre_dispatch,
      yield (batch, result) ──► results_list / ordered / unordered: place values,
                                raise the first task error (with a note naming it)

    On leaving early (task error, timeout, Ctrl-C, generator closed): the call's
    cancel flag stops thread batches between tasks, pending futures are cancelled,
    and on timeout or Ctrl-C the session kills running work where it can.

Only the caller's thread waits: it blocks on the done queue, with a deadline when a
timeout is set. The deadline of a batch counts from when it could start running: the
first ``n_workers`` batches in flight, in dispatch order, are the ones running, since
every pool serves its queue in order.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import operator
import queue
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from . import _budget
from ._backends import on_shutdown
from ._backends._base import Capabilities, Session
from ._batching import BatchSizer
from ._exceptions import InternalError, TaskTimeoutError, WorkerDiedError
from ._instrument import CallInfo, Dispatcher
from ._sharing import CallShares, free_spares
from ._worker import (
    Batch,
    BatchResult,
    WorkerContext,
    batch_of,
    deliver,
    describe_task,
    function_name,
    report,
)

logger = logging.getLogger(__name__)

__all__ = ["Call"]

# Tasks shorter than this are not timed one by one (their batch is): a clock read and an
# append a task would be a sizeable share of their cost.
_TIMED_TASK_SECONDS = 20e-6
# While tasks of an earlier call hold workers, how often a call with a timeout looks
# whether one is free (to start the clock of the batch it will run).
_ORPHAN_POLL_SECONDS = 0.05
# ... and how many of its timeouts a batch waits for such a worker before its clock runs.
_ORPHAN_WAIT_TIMEOUTS = 4


def native_hold(context: WorkerContext, capabilities: Capabilities) -> int | None:
    """The native-thread limit a call on thread workers of this process holds, if any."""
    if capabilities.separate_processes or not context.in_worker:
        return None
    return context.native_threads


def _notify(done: queue.SimpleQueue[int], seq: int, _future: Future[BatchResult]) -> None:
    done.put(seq)


# Tasks read from the source at a time (see Call._read).
_READ_SLICE = 64
# A step of reading ahead takes at most this share of the backend's batch duration, and
# no less than _READ_AHEAD_MIN_SECONDS (see Call._read_ahead): what is read in one step
# goes out as one batch, and a batch must be worth its cost (milliseconds on Dask).
_READ_AHEAD_SHARE = 0.1
_READ_AHEAD_MIN_SECONDS = 0.002
# Batches that calls ended without a kill left running, by session: each holds a worker
# until it ends, and a later call's timeout must not count the wait for that worker.
_ORPHANS: weakref.WeakKeyDictionary[Session, set[Future[Any]]] = weakref.WeakKeyDictionary()
_ORPHANS_LOCK = threading.Lock()


def _adopt_orphans(session: Session, futures: list[Future[Any]]) -> None:
    with _ORPHANS_LOCK:
        _ORPHANS.setdefault(session, set()).update(futures)
    owner = weakref.ref(session)
    for future in futures:
        future.add_done_callback(functools.partial(_orphan_ended, owner))


def _orphan_ended(owner: weakref.ref[Session], future: Future[Any]) -> None:
    session = owner()
    if session is not None:
        with _ORPHANS_LOCK:
            _ORPHANS.get(session, set()).discard(future)


def _orphans(session: Session) -> int:
    with _ORPHANS_LOCK:
        return len(_ORPHANS.get(session, ()))


# Calls whose results generator was collected, for the thread that ends them. The
# generator's finalizer only puts the call here: it runs wherever the garbage collector
# does, possibly in a thread holding one of the locks that ending a call takes, and
# SimpleQueue.put takes none that could be held there.
_ABANDONED: queue.SimpleQueue[Any] = queue.SimpleQueue()
_ABANDONER: list[threading.Thread] = []
_ABANDONER_LOCK = threading.Lock()


def abandon_later(call: Call) -> None:
    """The finalizer of a call's results generator: have the call ended."""
    _ABANDONED.put(call)


def ensure_abandoner() -> None:
    """Start the thread that ends abandoned calls, if it is not running."""
    with _ABANDONER_LOCK:
        if _ABANDONER and _ABANDONER[0].is_alive():
            return
        thread = threading.Thread(target=_abandoner, name="parlay-abandon", daemon=True)
        thread.start()
        _ABANDONER[:] = [thread]


def _abandoner() -> None:
    while (call := _ABANDONED.get()) is not None:
        try:
            call.abandon()
        except Exception:
            logger.exception("ending an abandoned call failed")
        del call


def _stop_abandoner() -> None:
    with _ABANDONER_LOCK:
        threads, _ABANDONER[:] = list(_ABANDONER), []
    for thread in threads:
        _ABANDONED.put(None)
        thread.join(timeout=10)


# Task durations measured by earlier calls, by backend and function (see Call._seed).
_ESTIMATES: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
_ESTIMATES_LOCK = threading.Lock()
_ESTIMATES_KEPT = 256


def _forget_estimates() -> None:
    with _ESTIMATES_LOCK:
        _ESTIMATES.clear()


on_shutdown(_forget_estimates)
on_shutdown(free_spares)
on_shutdown(_stop_abandoner)


def _function_key(func: Callable[..., Any]) -> str:
    """Where the function's code is: each lambda its own, a partial its function's."""
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}:{code.co_qualname}"
    return function_name(func)


_FUNC = operator.attrgetter("func")
_ARGS = operator.attrgetter("args")
_KWARGS = operator.attrgetter("keywords")


@dataclass(slots=True)
class _Columns:
    """Tasks by column: their functions, positional and keyword arguments."""

    funcs: list[Callable[..., Any]]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]

    def extend(self, other: _Columns) -> None:
        self.funcs += other.funcs
        self.args += other.args
        self.kwargs += other.kwargs


@dataclass(slots=True)
class _InFlight:
    batch: Batch
    future: Future[BatchResult]
    submitted: float
    started: float | None = None


class Call:
    """One parallel call: owns the task iterator, the in-flight batches and the results."""

    def __init__(
        self,
        tasks: Iterable[Any],
        *,
        session: Session,
        capabilities: Capabilities,
        context: WorkerContext,
        batch_size: int | None,
        pre_dispatch: int | None,
        timeout: float | None,
        return_exceptions: bool,
        max_nbytes: int | None,
        temp_folder: str | None = None,
        check_tasks: Callable[[list[Any], int], list[Any]],
        on_close: Callable[[], None] | None = None,
        instruments: Dispatcher | None = None,
        backend_name: str = "",
        nesting_level: int = 0,
    ) -> None:
        self._session = session
        self._capabilities = capabilities
        self._inline_timeout = timeout if capabilities.inline else None
        self._context = context
        self._timeout = timeout
        self._return_exceptions = return_exceptions
        self._check_tasks = check_tasks
        self._on_close = on_close
        self._n_workers = session.n_workers
        try:
            self._remaining: int | None = len(tasks)  # type: ignore[arg-type]
        except TypeError:
            self._remaining = None
        self._tasks = iter(tasks)
        self._next_index = 0  # of the next task to send
        self._read_index = 0  # of the next task to read from the source
        self._exhausted = False
        # Tasks read from an iterable without a length but not yet sent: reading a few
        # batches ahead tells when the end is near, so the last batches can shrink.
        self._ahead = _Columns([], [], [])
        self._ahead_at = 0  # the first task of _ahead not yet sent
        self._source_done = False
        self._read_step = max(
            _READ_AHEAD_MIN_SECONDS, capabilities.batch_seconds * _READ_AHEAD_SHARE
        )
        # An inline session finishes each batch inside submit(): keep one in flight,
        # so that generator modes run lazily, batch by batch, as they are consumed.
        self._max_inflight = 1 if capabilities.inline else (pre_dispatch or float("inf"))
        self._sizer = BatchSizer(
            batch_size,
            target=capabilities.batch_seconds,
            n_workers=self._n_workers,
            timeout=timeout,
        )
        self._inflight: dict[int, _InFlight] = {}
        self._seq = itertools.count()
        self._done: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._shares = None if max_nbytes is None else CallShares(max_nbytes, folder=temp_folder)
        self._blocking = session.blocking()
        self._events = instruments if instruments is not None and instruments.active else None
        # With an instrument that wants task times, batches of tasks that are not tiny
        # carry a context that asks the worker to time each task.
        self._timed_context = (
            replace(context, timing=True)
            if self._events is not None and self._events.task_times
            else None
        )
        self._reports = self._events is not None and self._events.wants("batch_finished")
        self._info = CallInfo(backend_name, self._n_workers, self._remaining, nesting_level)
        # Thread workers in this process hold the native pools' limit for each batch; the
        # call holds it too, so that it is not restored and set again between batches.
        self._native_hold = native_hold(context, capabilities)
        self._native_held = False
        self._n_tasks = 0
        self._t0 = time.perf_counter()
        self._closed = False
        self._thread: int | None = None
        self._driven = False  # a results generator has started reading the outcomes
        self._aborted = False
        # A worker still held a view of a per-call copy after its batch (see _sharing).
        self._pinned = False
        self._estimate_key: tuple[str, str] | None = None

    # -- dispatch ---------------------------------------------------------------------

    def start(self) -> None:
        """Send the first batches (up to pre_dispatch); later ones go as results return."""
        self._thread = threading.get_ident()
        self._blocking.__enter__()
        if self._events is not None:
            self._events.emit("call_started", self._info)
        try:
            if self._native_hold is not None:
                _budget.BLAS.acquire(self._native_hold)
                self._native_held = True
            self._seed()
            self._fill()
        except BaseException:
            self._abort(kill=False)
            raise

    def _seed(self) -> None:
        """Size the first batches from the task duration an earlier call of the same
        function on the same backend measured, instead of sending one-task batches and
        waiting for one to come back (a round trip: milliseconds on a cluster).

        Only where a round trip costs enough to matter (other processes, clusters): on
        threads it gained nothing and, after an idle spell, a big first batch waited on a
        thread still waking up (W4 10% slower). Not with a timeout: a stale estimate
        could make a batch outlast it.
        """
        if (
            not self._sizer.automatic
            or self._timeout is not None
            or not self._capabilities.separate_processes
        ):
            return
        self._hold(self._read(1))
        if len(self._ahead.funcs) > self._ahead_at:
            self._estimate_key = (self._info.backend, _function_key(self._ahead.funcs[0]))
            with _ESTIMATES_LOCK:
                estimate = _ESTIMATES.get(self._estimate_key)
            if estimate is not None:
                self._sizer.seed(estimate)

    def _fill(self) -> None:
        # Until a task has been timed, batches hold one task: send only a few of them, so
        # that pre_dispatch="all" does not turn a long iterable into one batch per task.
        limit = (
            self._max_inflight
            if self._sizer.measured
            else min(self._max_inflight, 2 * self._n_workers)
        )
        while not self._exhausted and len(self._inflight) < limit:
            remaining = self._remaining
            if remaining is None and self._sizer.automatic:
                remaining = self._read_ahead(self._sizer.next_size())
                size = self._sizer.next_size(remaining)
                if remaining is None:
                    # The end is not in sight: send what has been read, read no more now.
                    size = min(size, max(1, len(self._ahead.funcs) - self._ahead_at))
            else:
                size = self._sizer.next_size(remaining)
            chunk = self._take(size)
            if not chunk.funcs:
                break
            batch = batch_of(
                self._next_index,
                chunk.funcs,
                chunk.args,
                chunk.kwargs,
                self._batch_context(),
                not self._return_exceptions,
                self._cancel,
                self._shares,
            )
            self._next_index += len(batch)
            if self._remaining is not None:
                self._remaining -= len(batch)
            seq = next(self._seq)
            submitted = time.time()
            future = self._session.submit(batch)
            self._inflight[seq] = _InFlight(batch, future, submitted)
            # The callback holds the queue, not the call: an engine that keeps a future
            # (and its callbacks) after the call would otherwise keep the call's tasks.
            future.add_done_callback(functools.partial(_notify, self._done, seq))
        self._mark_started()

    def _batch_context(self) -> WorkerContext:
        timed = self._timed_context
        if timed is None:
            return self._context
        per_task = self._sizer.per_task
        return timed if per_task is None or per_task >= _TIMED_TASK_SECONDS else self._context

    def _take(self, size: int) -> _Columns:
        """The next `size` tasks (fewer at the end): those read ahead first, then the source."""
        ahead, at = self._ahead, self._ahead_at
        held = len(ahead.funcs) - at
        if held >= size or self._source_done:
            end = at + size
            chunk = _Columns(ahead.funcs[at:end], ahead.args[at:end], ahead.kwargs[at:end])
            self._ahead_at = at + len(chunk.funcs)
            self._exhausted = self._source_done and self._ahead_at == len(ahead.funcs)
            return chunk
        chunk = _Columns(ahead.funcs[at:], ahead.args[at:], ahead.kwargs[at:])
        self._ahead, self._ahead_at = _Columns([], [], []), 0
        chunk.extend(self._read(size - held))
        self._exhausted = self._source_done
        return chunk

    def _read_ahead(self, size: int) -> int | None:
        """Hold about a batch per worker, plus one, read ahead; the count left once known.

        A step reads for at most a tenth of the backend's batch duration (2 ms at least):
        tasks that take less time to run than to make (W1: a generator of ``delayed``
        calls) would otherwise be read by the tens of thousands, the whole source at
        once, while the workers wait.
        """
        want = size * (self._n_workers + 1)
        held = len(self._ahead.funcs) - self._ahead_at
        if not self._source_done and held < want:
            deadline = time.perf_counter() + self._read_step
            self._hold(self._read(want - held, deadline))
        return len(self._ahead.funcs) - self._ahead_at if self._source_done else None

    def _hold(self, fresh: _Columns) -> None:
        at = self._ahead_at
        ahead = _Columns(self._ahead.funcs[at:], self._ahead.args[at:], self._ahead.kwargs[at:])
        ahead.extend(fresh)
        self._ahead, self._ahead_at = ahead, 0

    def _read(self, size: int, deadline: float | None = None) -> _Columns:
        """Read up to `size` tasks from the source, checked, as columns.

        A few dozen at a time, each slice split into columns at once: a task's own
        object then dies young. Held until its batch was sent, thousands of them would
        reach the garbage collector's oldest generation and set off full collections,
        which cost a W1-sized call a fifth of its time.
        """
        out = _Columns([], [], [])
        source = self._tasks
        while size > 0:
            asked = min(size, _READ_SLICE)
            part = list(itertools.islice(source, asked))
            if part:
                part = self._check_tasks(part, self._read_index)
                self._read_index += len(part)
                size -= len(part)
                out.funcs.extend(map(_FUNC, part))
                out.args.extend(map(_ARGS, part))
                out.kwargs.extend(map(_KWARGS, part))
            if len(part) < asked:
                self._source_done = True
                break
            if deadline is not None and time.perf_counter() > deadline:
                break
        return out

    def _mark_started(self) -> None:
        """Start the timeout clock of the batches that hold a worker now: the first
        n_workers in flight (a pool serves its queue in order), fewer while tasks an
        earlier call left running hold some workers."""
        if self._timeout is None:
            return
        free = max(0, self._n_workers - _orphans(self._session))
        now = time.monotonic()
        wall = time.time()
        for position, record in enumerate(
            itertools.islice(self._inflight.values(), self._n_workers)
        ):
            # A batch waits for a worker an earlier call holds for a few timeouts at
            # most: on a cluster those tasks may hold other workers than this call's,
            # and a task stuck there must still be caught (within five timeouts).
            if record.started is None and (
                position < free or wall - record.submitted >= _ORPHAN_WAIT_TIMEOUTS * self._timeout
            ):
                record.started = now

    # -- waiting ----------------------------------------------------------------------

    def _next_done(self) -> int:
        if self._timeout is None:
            return self._done.get()
        while True:
            # Read before starting clocks: orphans that end in between are seen next time
            # round (a short wait), never missed (an endless wait with no clock running).
            waiting = _orphans(self._session) > 0
            self._mark_started()
            running = [
                r
                for r in itertools.islice(self._inflight.values(), self._n_workers)
                if r.started is not None
            ]
            oldest = min(running, key=lambda r: r.started or 0.0, default=None)
            if oldest is None or oldest.started is None:
                if not waiting:
                    return self._done.get()
                remaining = _ORPHAN_POLL_SECONDS
            else:
                remaining = oldest.started + self._timeout - time.monotonic()
                if remaining <= 0 and not oldest.future.done():
                    raise self._timeout_error(oldest.batch)
                if waiting:
                    remaining = min(remaining, _ORPHAN_POLL_SECONDS)
            try:
                return self._done.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                continue

    def _timeout_error(self, batch: Batch) -> TaskTimeoutError:
        task = describe_task(batch.func_of(0), batch.start)
        if len(batch) > 1:
            last = batch.start + len(batch) - 1
            task = f"the batch of tasks {batch.start}..{last}, from {task},"
        if self._capabilities.can_kill:
            action = "its worker was killed"
        elif self._capabilities.inline:
            action = (
                "it ran inline, so it could only be stopped once it returned; the rest did not run"
            )
        else:
            action = "the rest was cancelled (a thread cannot be killed: the running task ends in the background)"  # noqa: E501
        return TaskTimeoutError(
            f"{task} ran longer than timeout={self._timeout} s on {self._session.describe()}; "
            f"{action}",
            tasks=tuple(batch.indices),
            timeout=self._timeout or 0.0,
        )

    def _worker_died(self, error: WorkerDiedError, batch: Batch) -> WorkerDiedError:
        """Name every task that was in flight: the engine cannot tell which one died."""
        tasks = sorted(
            {*batch.indices, *(i for r in self._inflight.values() for i in r.batch.indices)}
        )
        codes = f" (exit codes {error.exit_codes})" if error.exit_codes else ""
        return WorkerDiedError(
            f"a worker of {self._session.describe()} died{codes} while running one of "
            f"{len(tasks)} tasks in flight, {tasks[0]}..{tasks[-1]}. A task may have crashed "
            "the interpreter, called os._exit(), been killed by a signal or run out of "
            "memory. The call's other running tasks were stopped and the pool is being "
            "replaced: the next call works.",
            tasks=tuple(tasks),
            exit_codes=error.exit_codes,
        )

    def _outcomes(self) -> Generator[tuple[Batch, BatchResult], None, None]:
        """Yield each finished batch with its result, in completion order, refilling."""
        kill = False
        error: BaseException | None = None
        try:
            while self._inflight:
                seq = self._next_done()
                record = self._inflight.pop(seq, None)
                if record is None:
                    raise InternalError(f"batch {seq} finished twice or was never sent")
                try:
                    result = record.future.result()
                except WorkerDiedError as exc:
                    # The future keeps this exception: keep no frame of this call on it
                    # (it would hold the batch, and the call's arrays, for the future's life).
                    exc.__traceback__ = None
                    raise self._worker_died(exc, record.batch) from exc.__cause__
                if result.fatal is not None:
                    raise result.fatal
                # An inline task cannot be interrupted: report it once it returns.
                if self._inline_timeout is not None and result.elapsed > self._inline_timeout:
                    raise self._timeout_error(record.batch)
                deliver(result)
                if result.pinned:
                    self._pinned = True
                self._n_tasks += len(result.values)
                self._sizer.observe(len(result.values), result.elapsed)
                if self._reports:
                    assert self._events is not None
                    self._events.emit(
                        "batch_finished", self._info, report(record.batch, result, record.submitted)
                    )
                self._fill()
                yield record.batch, result
        except (TaskTimeoutError, WorkerDiedError, KeyboardInterrupt) as exc:
            # A worker death stops the call's other running tasks too: left running, one
            # that also crashes its worker could do so on the pool the next call uses.
            kill, error = True, exc
            raise
        except BaseException as exc:
            kill = not isinstance(exc, Exception | GeneratorExit)
            error = exc
            raise
        finally:
            if self._inflight or not self._exhausted:
                self._abort(kill=kill, error=error)
            self._close(error)

    def _abort(self, *, kill: bool, error: BaseException | None = None) -> None:
        self._aborted = True
        self._cancel.set()
        futures = [record.future for record in self._inflight.values()]
        self._inflight.clear()
        if futures:
            self._session.cancel(futures, kill=kill)
            if not kill:
                left = self._session.still_running(futures)
                if left:
                    _adopt_orphans(self._session, left)
        self._close(error)

    def _close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._estimate_key is not None and self._sizer.measured_here:
            per_task = self._sizer.per_task
            assert per_task is not None
            with _ESTIMATES_LOCK:
                _ESTIMATES[self._estimate_key] = per_task
                _ESTIMATES.move_to_end(self._estimate_key)
                while len(_ESTIMATES) > _ESTIMATES_KEPT:
                    _ESTIMATES.popitem(last=False)
        if self._events is not None:
            self._events.emit("call_finished", self._info, error)
        if self._shares is not None:
            # Only after a clean end are the call's copies free of every worker.
            self._shares.clear(recycle=error is None and not self._aborted and not self._pinned)
        if threading.get_ident() == self._thread:
            self._blocking.__exit__(None, None, None)
        # else: abandoned, and ended by parlay's own thread (see abandon_later): a Dask
        # task's thread rejoins its pool only from that thread, which has moved on.
        if self._native_held:
            assert self._native_hold is not None
            _budget.BLAS.release(self._native_hold)
            self._native_held = False
        logger.debug(
            "%d tasks in %.3f s on %s",
            self._n_tasks,
            time.perf_counter() - self._t0,
            self._session.describe(),
        )
        if self._on_close is not None:
            self._on_close()

    # -- results ----------------------------------------------------------------------

    def _values(self, batch: Batch, result: BatchResult) -> list[Any]:
        """The batch's values, with each task error annotated; raise unless returning them."""
        for offset in result.errors:
            error = result.values[offset]
            task = describe_task(batch.func_of(offset), batch.start + offset)
            error.add_note(
                f"parlay: raised by {task} on {self._session.describe()}, worker {result.worker}"
            )
            if not self._return_exceptions:
                raise error
        return result.values

    @contextlib.contextmanager
    def _driving(self) -> Iterator[Generator[tuple[Batch, BatchResult], None, None]]:
        """Drive `_outcomes` and abort it as soon as the consumer leaves, whatever the way.

        Closing the inner generator explicitly matters: a traceback keeps the frames (and so
        the generator) alive, and pending work would go on until it is collected.
        """
        self._driven = True
        outcomes = self._outcomes()
        try:
            yield outcomes
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                # A task error raised by the consumer, or Ctrl-C while it held control:
                # stop now and tell the instruments why.
                self._abort(kill=not isinstance(exc, Exception), error=exc)
            raise
        finally:
            outcomes.close()

    def results_list(self) -> list[Any]:
        """Run the call to the end and return the results in task order."""
        parts: dict[int, list[Any]] = {}
        with self._driving() as outcomes:
            for batch, result in outcomes:
                parts[batch.start] = self._values(batch, result)
        out: list[Any] = []
        for start in sorted(parts):
            out.extend(parts[start])
        return out

    def abandon(self) -> None:
        """End a call whose results generator was dropped before it was ever read.

        A generator that never started runs no ``finally`` when it is closed or
        collected: without this, the call's pool slot, its hold on the native thread
        pools (left limited to one thread, for good) and its shared copies stayed taken.
        Run by parlay's own thread (see :func:`abandon_later`).
        """
        # A generator that started ends its call itself, in its own finally.
        if not self._closed and not self._driven:
            self._abort(kill=False, error=GeneratorExit())

    def results_ordered(self) -> Iterator[Any]:
        """Yield results in task order as soon as each is available."""
        pending: dict[int, list[Any]] = {}
        next_start = 0
        with self._driving() as outcomes:
            for batch, result in outcomes:
                pending[batch.start] = self._values(batch, result)
                while next_start in pending:
                    values = pending.pop(next_start)
                    next_start += len(values)
                    yield from values

    def results_unordered(self) -> Iterator[Any]:
        """Yield results as batches complete."""
        with self._driving() as outcomes:
            for batch, result in outcomes:
                yield from self._values(batch, result)
