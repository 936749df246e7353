"""How many tasks go in each batch.

Sending a batch to a worker has a fixed cost (a queue, pickling, a future: from a few
microseconds on threads to hundreds on a cluster), so tiny tasks are grouped. With
``batch_size="auto"`` a controller aims each batch at the backend's target duration
(``Capabilities.batch_seconds``), from the compute time that workers measure, as
joblib's does from round trips. Three limits keep the load balanced: a batch is at most
twice the size of the one before (an estimate from the first short tasks can be far
off); while the number of tasks left is known (the runner reads a few batches ahead of
an iterable without a length to know it near the end), a batch takes at most a
``1 / (2 * n_workers)`` share of them, so batches shrink towards the end and no worker is
left alone with a long tail; and with a timeout a batch aims at a quarter of it, because
the timeout is enforced per batch.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["BatchSizer"]

# Weight of the newest measurement in the running per-task estimate.
_SMOOTHING: Final = 0.5


class BatchSizer:
    """Batch sizes for one call: fixed, or adapted to measured task durations."""

    __slots__ = ("_fixed", "_last", "_n_workers", "_per_task", "_target")

    def __init__(
        self, batch_size: int | None, *, target: float, n_workers: int, timeout: float | None
    ) -> None:
        self._fixed = batch_size
        self._n_workers = max(1, n_workers)
        self._target = target if timeout is None else min(target, timeout / 4)
        self._per_task: float | None = None
        self._last = 1

    @property
    def automatic(self) -> bool:
        """Whether sizes adapt to the tasks (``batch_size="auto"``)."""
        return self._fixed is None

    @property
    def measured(self) -> bool:
        """Whether sizes are settled: fixed, or a task duration has been measured."""
        return self._fixed is not None or self._per_task is not None

    def next_size(self, remaining: int | None) -> int:
        """Size of the next batch; `remaining` is the count of tasks left, if known."""
        size = self.peek(remaining)
        self._last = size
        return size

    def peek(self, remaining: int | None = None) -> int:
        """What :meth:`next_size` would say now, without counting it as sent."""
        if self._fixed is not None:
            return self._fixed
        if self._per_task is None:
            return 1  # measure one task before guessing
        size = max(1, int(self._target / self._per_task))
        # Grow at most twofold a batch: an estimate from one short task can be far off,
        # and a single batch holding most of a call leaves the other workers idle.
        size = min(size, 2 * self._last)
        if remaining is not None:
            size = min(size, max(1, math.ceil(remaining / (2 * self._n_workers))))
        return size

    def observe(self, n_tasks: int, elapsed: float) -> None:
        """Record that a batch of `n_tasks` took `elapsed` seconds of work in a worker."""
        if self._fixed is not None or n_tasks <= 0:
            return
        per_task = max(elapsed / n_tasks, 1e-8)
        if self._per_task is None:
            self._per_task = per_task
        else:
            self._per_task += _SMOOTHING * (per_task - self._per_task)
