"""Automatic batch sizes."""

from __future__ import annotations

import pytest

from parlay import Parallel, delayed
from parlay._batching import BatchSizer
from parlay.testing import square


def test_fixed_size_is_kept() -> None:
    sizer = BatchSizer(7, target=0.05, n_workers=2, timeout=None)
    sizer.observe(7, 10.0)
    assert sizer.next_size(1000) == 7


def test_auto_measures_one_task_first_then_aims_at_the_target() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    assert sizer.next_size(None) == 1
    sizer.observe(1, 0.001)  # 1 ms a task -> 50 tasks make 50 ms
    assert sizer.next_size(None) == 50


def test_auto_leaves_work_for_every_worker() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    sizer.observe(1, 1e-6)
    # 50,000 tasks of 1 us would fit the target, but only a quarter of what is left goes.
    assert sizer.next_size(1000) == 250
    assert sizer.next_size(3) == 1


def test_auto_shrinks_when_tasks_get_slower() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    sizer.observe(100, 0.01)
    big = sizer.next_size(None)
    sizer.observe(big, big * 0.01)
    assert sizer.next_size(None) < big


def test_timeout_caps_the_batch_duration() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=0.04)
    sizer.observe(1, 0.001)
    assert sizer.next_size(None) == 10  # a quarter of 40 ms, at 1 ms a task


@pytest.mark.parametrize("n_tasks", [0, 1, 2, 3, 17, 1000])
@pytest.mark.parametrize("batch_size", ["auto", 1, 3, 64])
@pytest.mark.parametrize("n_jobs", [1, 2, 3])
def test_sweep_gives_every_result_in_order(
    backend: str, n_tasks: int, batch_size: int | str, n_jobs: int
) -> None:
    out = Parallel(n_jobs=n_jobs, backend=backend, batch_size=batch_size)(  # type: ignore[arg-type]
        delayed(square)(i) for i in range(n_tasks)
    )
    assert out == [i * i for i in range(n_tasks)]
