"""The dispatch loop: what happens to the rest of a call when it ends early."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import _wait_until
from parlay import Parallel, delayed

ran: list[int] = []
lock = threading.Lock()


def slow_unless_first(i: int) -> int:
    if i == 0:
        raise ValueError("first task fails")
    time.sleep(0.02)
    with lock:
        ran.append(i)
    return i


@pytest.mark.parametrize("backend", ["threads", "sequential"])
def test_a_task_error_cancels_the_pending_tasks_at_once(backend: str) -> None:
    ran.clear()
    with pytest.raises(ValueError, match="first task fails") as info:
        Parallel(n_jobs=2, backend=backend, batch_size=1)(
            delayed(slow_unless_first)(i) for i in range(200)
        )
    # The exception (and its traceback, and so the call's frames) is still alive here:
    # cancelling must not wait for it to be collected.
    time.sleep(0.3)
    assert info.value is not None
    assert len(ran) <= 8, f"{len(ran)} tasks ran after the error"


def test_leaving_a_generator_cancels_the_rest() -> None:
    ran.clear()
    gen = Parallel(n_jobs=2, backend="threads", batch_size=1, return_as="generator")(
        delayed(slow_unless_first)(i) for i in range(1, 200)
    )
    first = [next(gen) for _ in range(3)]
    gen.close()
    time.sleep(0.3)
    assert first == [1, 2, 3]
    assert len(ran) <= 10


def test_generator_mode_starts_the_work_before_the_first_next() -> None:
    ran.clear()
    gen = Parallel(n_jobs=2, backend="threads", batch_size=1, return_as="generator")(
        delayed(slow_unless_first)(i) for i in range(1, 5)
    )
    time.sleep(0.2)
    assert ran, "no task ran before the generator was consumed"
    assert list(gen) == [1, 2, 3, 4]


def test_pre_dispatch_bounds_what_is_taken_from_the_iterable() -> None:
    taken: list[int] = []

    def tasks():  # type: ignore[no-untyped-def]
        for i in range(1, 50):
            taken.append(i)
            yield delayed(slow_unless_first)(i)

    gen = Parallel(n_jobs=2, backend="threads", batch_size=1, pre_dispatch=3,
                   return_as="generator")(tasks())  # fmt: skip
    time.sleep(0.2)
    assert len(taken) == 3
    assert list(gen) == list(range(1, 50))


@pytest.mark.timeout(120)
def test_a_call_whose_worker_died_does_not_touch_the_pool_that_replaced_it(
    tmp_path: pytest.TempPathFactory,
) -> None:
    # Call A's worker dies; call B starts on the pool that replaced A's ("the next call
    # works"); A, still sending batches, must neither move them to B's pool nor, failing,
    # kill B's tasks there.
    import os

    from parlay import WorkerDiedError
    from parlay.testing import exit_after, mark_after, square

    folder = str(tmp_path)
    a = Parallel(
        n_jobs=2, backend="processes", batch_size=1, pre_dispatch=2, return_as="generator"
    )([delayed(square)(0), delayed(exit_after)(0.3, folder), delayed(mark_after)(folder, 1.0)])
    dying = os.path.join(folder, "dying")
    assert _wait_until(lambda: os.path.exists(dying), 60), "task 1 never ran"
    time.sleep(1.0)
    b = Parallel(n_jobs=2, backend="processes", return_as="generator")([delayed(time.sleep)(2)])
    assert next(a) == 0  # A sends task 2 now: B's pool has a free worker for it
    started = os.path.join(folder, "started")
    _wait_until(lambda: os.path.exists(started), 3)
    with pytest.raises(WorkerDiedError):
        next(a)
    assert list(b) == [None]
    assert not os.path.exists(started), "A's task 2 ran on B's pool"
