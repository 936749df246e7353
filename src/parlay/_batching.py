"""How many tasks go in each batch.

Sending a batch to a worker has a fixed cost (a queue, pickling, a future: from a few
microseconds on threads to hundreds on a cluster), so tiny tasks are grouped. With
``batch_size="auto"`` a controller aims each batch at the backend's target duration
(``Capabilities.batch_seconds``), from the compute time that workers measure, as
joblib's does from round trips. Two limits keep the load balanced: while the number of
tasks left is known (the runner reads a few batches ahead of an iterable without a length
to know it near the end), a batch takes at most a ``1 / (2 * n_workers)`` share of them,
so batches shrink towards the end (down to a quarter of the target duration; where that
floor is long and would leave the whole rest to one worker, the rest is split evenly across
the workers) and no worker is left alone with a long tail; and with a timeout a batch aims
at a quarter of it, because the timeout is enforced per batch.

A function run again on a backend of other processes starts from the task duration its
last call measured (``seed``); where that makes the whole call short (at most one target
batch per worker), the call goes in one batch per worker, sent at once.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["BatchSizer"]

# Weight of the newest measurement in the running per-task estimate.
_SMOOTHING: Final = 0.5
# Batches near the end shrink down to 1 / _TAIL_FRACTION of the target duration, no further.
_TAIL_FRACTION: Final = 4
# The rest of a call is split evenly across the workers only where that floor is this long.
_SPLIT_MIN_FLOOR_SECONDS: Final = 0.02


class BatchSizer:
    """Batch sizes for one call: fixed, or adapted to measured task durations."""

    __slots__ = ("_even", "_fixed", "_n_workers", "_per_task", "_seeded", "_split", "_target")

    def __init__(
        self, batch_size: int | None, *, target: float, n_workers: int, timeout: float | None
    ) -> None:
        self._fixed = batch_size
        self._n_workers = max(1, n_workers)
        self._target = target if timeout is None else min(target, timeout / 4)
        self._per_task: float | None = None
        self._seeded = False  # _per_task comes from an earlier call, not yet from this one
        # The batch size of a short call that an earlier call's estimate split evenly.
        self._even: int | None = None
        # The even split of the call's rest, once the floor would exceed it; 0 for no
        # split (next_size).
        self._split: int | None = None

    @property
    def per_task(self) -> float | None:
        """The running estimate of a task's seconds of work, once one has been measured."""
        return self._per_task

    @property
    def automatic(self) -> bool:
        """Whether sizes adapt to the tasks (``batch_size="auto"``)."""
        return self._fixed is None

    @property
    def measured(self) -> bool:
        """Whether sizes are settled: fixed, or a task duration has been measured."""
        return self._fixed is not None or self._per_task is not None

    def next_size(self, remaining: int | None = None) -> int:
        """Size of the next batch; `remaining` is the count of tasks left, if known."""
        if self._fixed is not None:
            return self._fixed
        if self._per_task is None:
            return 1  # measure one task before guessing
        size = max(1, int(self._target / self._per_task))
        if remaining is not None:
            share = math.ceil(remaining / (2 * self._n_workers))
            # Shrinking a batch below a quarter of the target duration gains nothing: the
            # tail it would save is shorter than what sending more batches costs...
            floor = int(self._target / (_TAIL_FRACTION * self._per_task))
            if self._split is None and floor * self._n_workers > remaining:
                # ... but where the floor would put the whole rest of the call on one
                # worker while the others wait (W4 on Dask: 28 of 32 tasks in one batch,
                # 73 ms on one worker, the other idle), the rest is split evenly, once:
                # splitting it again as it shrinks would send a chain of ever smaller
                # batches (W1: 1.3-1.8x slower). Only where the floor is long (Dask, Ray):
                # the split cannot see the batches still running, so a part can queue
                # behind one, and below 20 ms of floor it lost as much as it saved (W4s
                # on processes 1.08x). Nor when each part would be under a quarter of the
                # floor: too little work to pay for one more batch (W1's 20,000 tasks of
                # 0.5 us on Ray, split in two, were 7-11% slower).
                part = math.ceil(remaining / self._n_workers)
                worth = self._target / _TAIL_FRACTION >= _SPLIT_MIN_FLOOR_SECONDS
                self._split = part if worth and _TAIL_FRACTION * part >= floor else 0
            if self._split:
                floor = min(floor, self._split)
            size = min(size, max(1, share, floor))
            if self._seeded:
                # An earlier call's estimate may be far off (heavier arguments): until
                # one comes back, no batch takes more than an even share of the rest.
                even = math.ceil(remaining / self._n_workers)
                size = min(size, even)
                if (
                    self._even is None
                    and remaining * self._per_task <= self._n_workers * self._target
                ):
                    # A short call (each worker's share under one target batch) goes in
                    # one batch per worker, all sent at once: the shrinking batches above
                    # (15, 9, 4, 2, 2 of W4s's 32) each cost a worker a wait for its next
                    # batch, most of a millisecond on 2 cores (W4s 0.82-0.90x on
                    # processes, Dask and Ray; W1 0.83-0.98x; in-process A/B).
                    self._even = even
                if self._even is not None:
                    size = self._even
        return size

    @property
    def measured_here(self) -> bool:
        """Whether this call's own tasks gave the estimate (not an earlier call's)."""
        return self._per_task is not None and not self._seeded

    def seed(self, per_task: float) -> None:
        """Start from a task duration an earlier call measured, until one is measured here."""
        if self._fixed is None and self._per_task is None:
            self._per_task = per_task
            self._seeded = True

    def observe(self, n_tasks: int, elapsed: float) -> None:
        """Record that a batch of `n_tasks` took `elapsed` seconds of work in a worker."""
        if self._fixed is not None or n_tasks <= 0:
            return
        per_task = max(elapsed / n_tasks, 1e-8)
        if self._per_task is None or self._seeded:
            self._per_task = per_task
            self._seeded = False
        else:
            self._per_task += _SMOOTHING * (per_task - self._per_task)
