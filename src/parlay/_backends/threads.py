"""A pool of threads in this process (``backend="threads"``), on ThreadPoolExecutor."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, final

from .._worker import run_batch
from ._base import Backend, Capabilities, Session

if TYPE_CHECKING:
    from .._negotiate import Decision
    from .._worker import Batch, BatchResult


@final
class ThreadsSession(Session):
    """Each batch runs in a copy of the caller's context (its config and nesting)."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self._lock = threading.Lock()
        self._executor = self._new_executor()

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.n_workers, thread_name_prefix="parlay-thread")

    def submit(self, batch: Batch) -> Future[BatchResult]:
        context = contextvars.copy_context()
        with self._lock:
            return self._executor.submit(context.run, run_batch, batch)

    def cancel(self, futures: Iterable[Future[BatchResult]], *, kill: bool) -> None:
        # A thread cannot be killed: a running batch stops at its next task, when the
        # runner sets the call's cancel flag. A task stuck inside one call would hold a
        # thread of the pool, so on kill the session moves on to a fresh pool and the
        # old one lets its threads finish and exit.
        stuck = [future for future in futures if not future.cancel() and not future.done()]
        if kill and stuck:
            with self._lock:
                old, self._executor = self._executor, self._new_executor()
            old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return f"threads ({self.n_workers} threads)"


@final
class ThreadsBackend(Backend):
    """Threads share the caller's memory; best for work that releases the GIL."""

    name = "threads"
    capabilities = Capabilities(shared_memory=True, separate_processes=False, batch_seconds=0.01)

    def open(self, decision: Decision) -> Session:
        return ThreadsSession(decision.n_jobs)
