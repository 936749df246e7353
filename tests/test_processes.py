"""The process backend's pool: one for every top-level call, resized to what each wants."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

import parlay
from parlay import Parallel, delayed


def workers() -> set[int]:
    """The pids of this process's loky workers that are alive."""
    found = set()
    for child in psutil.Process().children():
        try:
            command = " ".join(child.cmdline())
            alive = child.status() != psutil.STATUS_ZOMBIE
            if alive and "loky" in command and "resource_tracker" not in command:
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def stamp(seconds: float) -> tuple[int, float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def most_at_once(spans: list[tuple[int, float, float]]) -> int:
    edges = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_calls_of_many_sizes_share_one_pool_that_resizes() -> None:
    seen: list[int] = []
    for n_jobs in (2, 3, 8, 16, 32):
        before = workers()
        spans = Parallel(n_jobs=n_jobs, backend="processes", batch_size=1)(
            delayed(stamp)(0.05) for _ in range(2 * n_jobs)
        )
        live = workers()
        seen.append(len(live))
        assert len(live) <= max(n_jobs, len(before)), (n_jobs, len(live), len(before))
        assert {pid for pid, _, _ in spans} <= live | before
        assert most_at_once(spans) <= n_jobs
    assert seen[-1] == 32
    warm = workers()
    spans = Parallel(n_jobs=2, backend="processes")(delayed(stamp)(0.01) for _ in range(6))
    assert {pid for pid, _, _ in spans} <= warm, "the last call did not reuse warm workers"
    # The extra workers leave while the call runs, not before it starts.
    deadline = time.monotonic() + 30
    while len(workers()) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers()) == 2, "the pool was not shrunk to the call's size"


@pytest.mark.timeout(120)
def test_a_small_call_beside_a_large_one_uses_only_its_own_workers() -> None:
    # Two threads call at once: the 4-worker call grows the shared pool, and the
    # 2-worker call still runs at most 2 tasks at a time on it.
    spans: dict[int, list[tuple[int, float, float]]] = {}

    def call(n_jobs: int) -> None:
        spans[n_jobs] = Parallel(n_jobs=n_jobs, backend="processes", batch_size=1)(
            delayed(stamp)(0.1) for _ in range(12)
        )

    Parallel(n_jobs=4, backend="processes")(delayed(stamp)(0.01) for _ in range(4))
    threads = [threading.Thread(target=call, args=(n,)) for n in (4, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert most_at_once(spans[2]) <= 2, spans[2]
    assert most_at_once(spans[4]) >= 3, spans[4]
    assert len(workers()) <= 4


def test_a_nested_process_pool_is_closed_with_its_call() -> None:
    def outer(_: int) -> int:
        pids = Parallel(n_jobs=2, backend="processes")(delayed(os.getpid)() for _ in range(4))
        return len(set(pids))

    with pytest.warns(ResourceWarning, match="oversubscribe"):
        out = Parallel(n_jobs=2, backend="threads")(delayed(outer)(i) for i in range(2))
    assert all(n >= 1 for n in out)
    parlay.shutdown()
    assert not workers()


def test_closing_a_session_settles_its_waiting_batches() -> None:
    # A private (nested-call) session of one worker: two of its three batches wait for
    # a slot, and close() must cancel them rather than leave them pending for good.
    from parlay._api import task_context
    from parlay._backends.processes import ProcessesBackend
    from parlay._negotiate import Decision
    from parlay._worker import batch_of

    decision = Decision("processes", 1, "explicit", nesting_level=1, inner_budget=1)
    session = ProcessesBackend().open(decision)
    context = task_context(decision, ProcessesBackend.capabilities)
    futures = [
        session.submit(
            batch_of(i, [time.sleep], [(0.3,)], [None], context, True, threading.Event(), None)
        )
        for i in range(3)
    ]
    session.close()
    assert all(future.done() for future in futures)
    assert [future.cancelled() for future in futures] == [False, True, True]
