"""Automatic batch sizes."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from parlay import BatchReport, CallInfo, Instrument, Parallel, delayed
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
    sizer.observe(1, 1e-4)
    # 500 tasks of 0.1 ms fit the target, but only a quarter of what is left goes...
    assert sizer.next_size(1000) == 250
    # ... down to a quarter of the target's duration: a smaller batch saves less tail
    # than sending it costs.
    assert sizer.next_size(400) == 125
    assert sizer.next_size(100) == 125  # all of it: a tail of 12.5 ms at most


def test_a_long_floor_splits_the_rest_evenly_once() -> None:
    # A floor of 62 ms (Dask's 0.25 s target) would put all of what is left on one worker
    # while the other waits: the rest is split evenly, once, not again and again.
    sizer = BatchSizer(None, target=0.25, n_workers=2, timeout=None)
    sizer.observe(1, 0.0025)
    assert sizer.next_size(28) == 14
    assert sizer.next_size(14) == 14
    assert sizer.next_size(3) >= 3  # the runner sends what is left
    # Halves of a rest too small to pay for a batch each are not worth a second batch.
    tiny = BatchSizer(None, target=0.25, n_workers=2, timeout=None)
    tiny.observe(1, 1e-6)
    assert tiny.next_size(2000) >= 2000
    slow = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    slow.observe(1, 0.01)  # 10 ms tasks: the tail shrinks to one task a batch
    assert slow.next_size(100) == 5
    assert slow.next_size(3) == 1


def test_a_short_call_run_again_goes_in_one_batch_per_worker() -> None:
    # An earlier call measured 1 ms a task: 32 tasks are 32 ms, under one 50 ms batch per
    # worker, so they go as two batches of 16 at once (not 16, 8, 4, 2, 2).
    short = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    short.seed(0.001)
    assert short.next_size(32) == 16
    assert short.next_size(16) == 16
    # A longer call keeps the shrinking batches, an even share of the rest at most,
    # until one of its own batches has been measured.
    long = BatchSizer(None, target=0.05, n_workers=2, timeout=None)
    long.seed(0.001)
    assert long.next_size(1000) == 50
    assert long.next_size(950) == 50
    long.observe(50, 0.05)
    assert long.next_size(32) == 12  # measured here: the tail shrinks as usual


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


def nap(i: int) -> int:
    time.sleep(0.002)
    return i


class Sizes(Instrument):
    """Records each batch's first task and size."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        self.sizes.append((batch.first, batch.n_tasks))

    def by_start(self) -> list[int]:
        return [n for _, n in sorted(self.sizes)]


def test_batches_shrink_at_the_end_of_an_iterable_without_length() -> None:
    sizes = Sizes()
    tasks = (delayed(nap)(i) for i in range(200))  # a generator: no len()
    out = Parallel(n_jobs=2, backend="threads", instruments=[sizes])(tasks)
    assert out == list(range(200))
    by_start = sizes.by_start()
    assert by_start[:2] == [1, 1]
    assert max(by_start) >= 3  # 10 ms batches of 2 ms tasks
    assert sum(by_start) == 200
    # Without the end in sight, the last batch would be whatever the iterable had left.
    assert by_start[-2:] == [1, 1], f"the last batches did not shrink: {by_start}"


def _first_batches(backend: str, **options: Any) -> list[int]:
    sizes = Sizes()
    out = Parallel(n_jobs=2, backend=backend, instruments=[sizes], **options)(
        delayed(nap)(i) for i in range(100)
    )
    assert out == list(range(100))
    return sizes.by_start()[:2]


def test_a_function_run_again_starts_from_its_measured_duration() -> None:
    import parlay

    # The first call sends one-task batches until one comes back and gives a duration...
    assert _first_batches("processes") == [1, 1]
    # ... the next call of the same function sizes its batches from it at once: no
    # waiting for a round trip (W1 on Dask 0.39-0.49x, W4s on processes 0.90x).
    assert _first_batches("processes")[0] > 1
    # Not with a timeout (an old estimate could make a batch outlast it), not on threads
    # (a round trip there is cheap), and not after shutdown, which forgets them.
    assert _first_batches("processes", timeout=30) == [1, 1]
    _first_batches("threads")
    assert _first_batches("threads") == [1, 1]
    parlay.shutdown()
    assert _first_batches("processes") == [1, 1]


def test_a_short_call_run_again_sends_one_batch_per_worker() -> None:
    import parlay

    def sizes_of_call() -> list[int]:
        sizes = Sizes()
        out = Parallel(n_jobs=2, backend="processes", instruments=[sizes])(
            delayed(nap)(i) for i in range(32)
        )
        assert out == list(range(32))
        return sizes.by_start()

    sizes_of_call()  # measures nap: some 2 ms, so 32 of them are a short call
    assert sizes_of_call() == [16, 16]
    parlay.shutdown()


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


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_tasks_read_from_a_generator_die_young(backend: str) -> None:
    # Tasks are split into columns as they are read: the Task objects themselves must
    # not live until their batch is done, or a long call pushes thousands of them into
    # the garbage collector's oldest generation (a full collection every few calls).
    alive: list[int] = []
    refs: list[weakref.ref[Any]] = []

    def tasks() -> Iterator[Any]:
        for i in range(5000):
            if i % 500 == 0:
                alive.append(sum(ref() is not None for ref in refs))
            task = delayed(square)(i)
            refs.append(weakref.ref(task))
            yield task

    out = Parallel(n_jobs=2, backend=backend)(tasks())
    assert out == [i * i for i in range(5000)]
    assert max(alive) <= 2 * 64 + 1, f"tasks read but still alive: {alive}"


def test_a_slow_source_of_tiny_tasks_is_not_read_whole_before_sending() -> None:
    # Tasks that run faster than the source makes them: a batch sized for the target
    # duration would hold the whole source, read before anything is sent while the
    # workers wait. Reading ahead is bounded in time, so work starts as tasks come.
    n_tasks = 1500
    started: list[int] = []
    made = [0]

    def note(i: int) -> int:
        started.append(made[0])  # how many tasks the source had made when this one ran
        return i

    def tasks() -> Iterator[Any]:
        for i in range(n_tasks):
            time.sleep(0.0001)  # a source slower than the tasks (and off the GIL)
            made[0] += 1
            yield delayed(note)(i)

    out = Parallel(n_jobs=2, backend="threads")(tasks())
    assert out == list(range(n_tasks))
    # Nearly every task ran while the source was still making the rest (reading up to
    # the batch size, the whole source, first: about 650 of 1500 here).
    early = sum(made_then < n_tasks for made_then in started)
    assert early >= n_tasks * 9 // 10, f"{early} of {n_tasks} tasks ran before the source ended"
