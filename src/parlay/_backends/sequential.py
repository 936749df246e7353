"""Run every task inline, in the caller's thread (``backend="sequential"``, ``n_jobs=1``)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, final

from .._worker import run_batch
from ._base import Backend, Capabilities, Session

if TYPE_CHECKING:
    from .._negotiate import Decision
    from .._worker import Batch, BatchResult


@final
class SequentialSession(Session):
    """Runs each batch at once in ``submit`` and returns a finished future."""

    n_workers = 1

    def submit(self, batch: Batch) -> Future[BatchResult]:
        future: Future[BatchResult] = Future()
        future.set_result(run_batch(batch))
        return future

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "sequential (inline, in the caller's thread)"


@final
class SequentialBackend(Backend):
    """No workers: tasks run one after another in the calling thread."""

    name = "sequential"
    capabilities = Capabilities(
        shared_memory=True, separate_processes=False, inline=True, batch_seconds=0.01
    )

    def open(self, decision: Decision) -> Session:
        return SequentialSession()
