"""Native thread pools (BLAS, OpenMP) of worker processes within the budget of their tasks."""

from __future__ import annotations

import time

import pytest

from parlay import Parallel, delayed

threadpoolctl = pytest.importorskip("threadpoolctl")
np = pytest.importorskip("numpy")


def blas_threads(pause: float = 0.0) -> int:
    """The threads of the native pools loaded here (numpy's BLAS), 0 if none is loaded."""
    import numpy  # noqa: F401  - loads the BLAS in a fresh worker

    time.sleep(pause)
    info = threadpoolctl.threadpool_info()
    return max((pool["num_threads"] for pool in info), default=0)


def process_wide() -> int:
    """The threads of the loaded pools whose count is the process's (not OpenMP's, which
    is each thread's own: the limiter leaves the caller's to the thread workers)."""
    info = threadpoolctl.threadpool_info()
    return max((p["num_threads"] for p in info if p["user_api"] != "openmp"), default=0)


@pytest.fixture
def original() -> int:
    n = blas_threads()
    if n == 0:
        pytest.skip("no native thread pool is loaded")
    if n < 2:
        pytest.skip("the native thread pools already use one thread")
    return n


def test_process_workers_are_limited_to_their_budget(original: int) -> None:
    decision = Parallel(n_jobs=2, backend="processes").explain()
    out = Parallel(n_jobs=2, backend="processes")(delayed(blas_threads)() for _ in range(4))
    assert set(out) == {min(original, decision.inner_budget)}
    assert blas_threads() == original


def test_thread_workers_are_limited_to_their_budget_for_the_call(original: int) -> None:
    decision = Parallel(n_jobs=2, backend="threads").explain()
    out = Parallel(n_jobs=2, backend="threads")(delayed(blas_threads)(0.05) for _ in range(4))
    assert set(out) == {min(original, decision.inner_budget)}
    assert blas_threads() == original, "the caller's pools were not restored"


def test_a_generator_of_results_never_read_gives_the_pools_back() -> None:
    import gc

    before = process_wide()
    if before < 2:
        pytest.skip("no process-wide native pool with more than one thread")
    results = Parallel(n_jobs=2, backend="threads", return_as="generator")(
        delayed(blas_threads)() for _ in range(4)
    )
    assert process_wide() < before  # the call holds the limit while it runs
    del results
    gc.collect()
    # The batches already sent end in the pool's threads, and the last one restores.
    deadline = time.monotonic() + 5
    while process_wide() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process_wide() == before, "a call never read kept the native pools limited"


def test_overlapping_calls_from_several_threads_keep_the_limit_right(original: int) -> None:
    import threading

    budget = Parallel(n_jobs=2, backend="threads").explain().inner_budget
    seen: list[list[int]] = []
    barrier = threading.Barrier(3)

    def caller(pause: float) -> None:
        barrier.wait()
        seen.append(
            Parallel(n_jobs=2, backend="threads")(delayed(blas_threads)(pause) for _ in range(4))
        )

    threads = [threading.Thread(target=caller, args=(p,)) for p in (0.05, 0.15)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(timeout=60)
    # During both calls, and in the one that outlives the other, the tasks saw the budget;
    # after both, the original limits are back.
    assert [set(s) for s in seen] == [{min(original, budget)}] * 2
    assert blas_threads() == original


def test_inline_tasks_keep_the_callers_pools(original: int) -> None:
    assert Parallel(n_jobs=1)(delayed(blas_threads)() for _ in range(2)) == [original] * 2


def test_the_limiter_counts_references_and_restores() -> None:
    from parlay._budget import BlasLimiter

    if process_wide() < 2:
        pytest.skip("no process-wide native pool with more than one thread")
    before = process_wide()
    limiter = BlasLimiter()
    limiter.acquire(1)
    limiter.acquire(1)
    limiter.release(1)
    assert process_wide() == 1, "released while another holder still held the limit"
    limiter.release(1)
    assert process_wide() == before


def test_inner_max_num_threads_is_the_users_last_word(original: int) -> None:
    import warnings

    from parlay import parallel_config

    with parallel_config(inner_max_num_threads=1):
        out = Parallel(n_jobs=1, backend="processes", timeout=30)(
            delayed(blas_threads)() for _ in range(2)
        )
    assert set(out) == {1}
    with (
        pytest.warns(ResourceWarning, match="oversubscribed"),
        parallel_config(inner_max_num_threads=original),
    ):
        Parallel(n_jobs=2, backend="processes")(delayed(blas_threads)() for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with parallel_config(inner_max_num_threads=1):
            Parallel(n_jobs=2, backend="processes")(delayed(blas_threads)() for _ in range(2))
