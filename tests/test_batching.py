"""Automatic batch sizes."""

from __future__ import annotations

import itertools

import pytest

from parlay import Parallel, delayed
from parlay._batching import BatchSizer
from parlay.testing import square


def test_fixed_size_is_kept() -> None:
    sizer = BatchSizer(7, target=0.05, n_workers=2, timeout=None)
    sizer.observe(7, 10.0)
    assert sizer.next_size(1000) == 7


def test_auto_measures_one_task_first_then_grows_twofold_to_the_target() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    assert sizer.next_size(None) == 1
    sizer.observe(1, 0.001)  # 1 ms a task -> 50 tasks make 50 ms
    assert [sizer.next_size(None) for _ in range(7)] == [2, 4, 8, 16, 32, 50, 50]
    assert sizer.peek() == 50  # peeking does not count as a batch sent


def test_auto_leaves_work_for_every_worker() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    sizer.observe(1, 1e-6)
    while sizer.next_size(None) < 1000:  # grow past the share cap
        pass
    # 50,000 tasks of 1 us would fit the target, but only a quarter of what is left goes.
    assert sizer.next_size(1000) == 250
    assert sizer.next_size(3) == 1


def test_auto_shrinks_when_tasks_get_slower() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    sizer.observe(100, 0.01)  # 0.1 ms a task: 500 make the target
    while (big := sizer.next_size(None)) < 500:
        pass
    sizer.observe(big, big * 0.01)  # now 10 ms a task
    assert sizer.next_size(None) < big


def test_timeout_caps_the_batch_duration() -> None:
    sizer = BatchSizer(None, target=0.05, n_workers=2, timeout=0.04)
    sizer.observe(1, 0.001)
    assert [sizer.next_size(None) for _ in range(5)] == [2, 4, 8, 10, 10]  # a quarter of 40 ms


def test_batches_shrink_at_the_end_of_an_iterable_without_length() -> None:
    from parlay import BatchReport, CallInfo, Instrument

    class Sizes(Instrument):
        def __init__(self) -> None:
            self.sizes: list[tuple[int, int]] = []

        def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
            self.sizes.append((batch.first, batch.n_tasks))

    sizes = Sizes()
    tasks = (delayed(square)(i) for i in range(3000))  # a generator: no len()
    out = Parallel(n_jobs=2, backend="threads", instruments=[sizes])(tasks)
    assert out == [i * i for i in range(3000)]
    by_start = [n for _, n in sorted(sizes.sizes)]
    assert by_start[:2] == [1, 1]
    assert all(b <= 2 * a for a, b in itertools.pairwise(by_start)), by_start
    assert by_start[-1] == 1, f"the last batches did not shrink: {by_start}"


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
