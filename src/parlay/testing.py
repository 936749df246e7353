"""Conformance checks that every parlay backend must pass.

parlay's own suite runs each check on each built-in backend; the author of a new
backend runs them on theirs::

    from parlay.testing import check_backend
    check_backend("mybackend")                 # raises AssertionError on the first failure

or one test per check with pytest::

    @pytest.mark.parametrize("check", sorted(parlay.testing.CHECKS))
    def test_conformance(check):
        parlay.testing.CHECKS[check]("mybackend", n_jobs=2)

Each check takes the backend (a registered name or a :class:`parlay.Backend` instance)
and ``n_jobs``. Checks that need a capability the backend lacks (killing a worker,
separate processes) return without asserting anything.
"""

from __future__ import annotations

import os
import pickle
import random
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import _backends
from ._api import Parallel, delayed
from ._backends._base import Backend, Capabilities
from ._exceptions import SerializationError, TaskTimeoutError, WorkerDiedError

__all__ = ["CHECKS", "check_backend"]

Check = Callable[..., None]


# -- task helpers (module level, so that worker processes import them by reference) -------


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def jittered_square(x: int) -> int:
    """Return ``x * x`` after a random pause of up to 3 ms, to shuffle completion order."""
    time.sleep(random.random() * 0.003)
    return x * x


def raise_at(x: int, bad: int) -> int:
    """Return `x`, but raise ``ValueError`` when ``x == bad``."""
    if x == bad:
        raise ValueError(f"task {x} failed on purpose")
    return x


def exit_at(x: int, bad: int) -> int:
    """Return `x`, but end the worker process with exit code 3 when ``x == bad``."""
    if x == bad:
        os._exit(3)
    return x


def kill_self_at(x: int, bad: int) -> int:
    """Return `x`, but SIGKILL the worker process when ``x == bad`` (as the OOM killer does)."""
    if x == bad:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return x


def sleep_at(x: int, bad: int, seconds: float, pid_file: str | None = None) -> int:
    """Return `x`; when ``x == bad``, write the pid to `pid_file` and sleep `seconds`."""
    if x == bad:
        if pid_file is not None:
            with open(pid_file, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(seconds)
    return x


def raise_at_else_sleep(x: int, bad: int, seconds: float) -> int:
    """Raise ``ValueError`` when ``x == bad``; otherwise sleep `seconds` and return `x`."""
    if x == bad:
        raise ValueError(f"task {x} failed on purpose")
    time.sleep(seconds)
    return x


_KEPT: list[Any] = []


def keep_and_sum(array: Any) -> float:
    """Keep `array` in this process's memory, as a careless task might; return its sum."""
    _KEPT.append(array)
    return float(array.sum())


def sums_kept() -> list[float]:
    """The sums of the arrays :func:`keep_and_sum` kept in this process, now."""
    return [float(array.sum()) for array in _KEPT]


def exit_after(seconds: float, folder: str | None = None) -> None:
    """End the worker process with exit code 3 after `seconds`; first create ``dying``
    in `folder`, if given."""
    time.sleep(seconds)
    if folder is not None:
        open(os.path.join(folder, "dying"), "w").close()
    os._exit(3)


def mark_after(folder: str, seconds: float) -> None:
    """Create ``started`` in `folder`, sleep `seconds`, then create ``finished``."""
    open(os.path.join(folder, "started"), "w").close()
    time.sleep(seconds)
    open(os.path.join(folder, "finished"), "w").close()


def nested_sum(x: int, n_jobs: int) -> tuple[int, str, int]:
    """Run a nested parallel call inside a task; return its sum, backend and level."""
    inner = Parallel(n_jobs=n_jobs)
    decision = inner.explain()
    total = sum(inner(delayed(square)(i) for i in range(x)))
    return total, decision.backend, decision.nesting_level


def add(x: int, *, y: int = 0) -> int:
    """Return ``x + y`` (for keyword arguments)."""
    return x + y


class Unpicklable:
    """An object that refuses to be pickled."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable objects cannot be pickled (on purpose)")


def _fail_to_load() -> None:
    raise RuntimeError("this object fails to unpickle (on purpose)")


class FailsToUnpickle:
    """Pickles fine, fails when unpickled."""

    def __reduce__(self) -> Any:
        return (_fail_to_load, ())


#: Names of the threads that unpickled a :class:`NotesItsThread`, in order.
UNPICKLED_IN: list[str] = []


def _note_thread(x: int) -> int:
    UNPICKLED_IN.append(threading.current_thread().name)
    return x


class NotesItsThread:
    """Unpickles as its number, recording the unpickling thread in :data:`UNPICKLED_IN`."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (_note_thread, (self.x,))


def return_thread_noting(x: int) -> NotesItsThread:
    """Return a :class:`NotesItsThread` of `x` (to see which caller thread unpickles results)."""
    return NotesItsThread(x)


def return_unpicklable(x: int) -> Unpicklable:
    """Return an object that cannot be pickled (to send it back from a worker)."""
    return Unpicklable()


def return_fails_to_unpickle(x: int) -> FailsToUnpickle:
    """Return an object that cannot be unpickled by the caller."""
    return FailsToUnpickle()


# -- the checks -------------------------------------------------------------------------


def _capabilities(backend: str | Backend) -> Capabilities:
    if isinstance(backend, Backend):
        return backend.capabilities
    return _backends.capabilities_of(backend)


def check_order(backend: str | Backend, n_jobs: int = 2) -> None:
    """Results come back in task order whatever the completion order."""
    out = Parallel(n_jobs=n_jobs, backend=backend)(delayed(jittered_square)(i) for i in range(60))
    assert out == [i * i for i in range(60)], out


def check_generators(backend: str | Backend, n_jobs: int = 2) -> None:
    """``return_as="generator"`` yields in order; ``"generator_unordered"`` yields them all."""
    gen = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")(
        delayed(jittered_square)(i) for i in range(40)
    )
    assert not isinstance(gen, list)
    assert list(gen) == [i * i for i in range(40)]
    unordered = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")(
        delayed(jittered_square)(i) for i in range(40)
    )
    assert sorted(unordered) == [i * i for i in range(40)]


def check_generator_closed_early(backend: str | Backend, n_jobs: int = 2) -> None:
    """Leaving a generator early cancels the rest, and the next call works."""
    gen = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")(
        delayed(square)(i) for i in range(10_000)
    )
    assert [next(gen) for _ in range(5)] == [0, 1, 4, 9, 16]
    gen.close()
    assert Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(3)) == [
        0,
        1,
        4,
    ]


def check_task_exception(backend: str | Backend, n_jobs: int = 2) -> None:
    """A task's exception arrives with its own type, a note naming it, its source line."""
    try:
        Parallel(n_jobs=n_jobs, backend=backend)(delayed(raise_at)(i, 7) for i in range(30))
    except ValueError as exc:
        assert str(exc) == "task 7 failed on purpose", str(exc)
        notes = getattr(exc, "__notes__", [])
        assert any("task 7" in note and "raise_at" in note for note in notes), notes
        text = "".join(traceback.format_exception(exc))
        assert 'raise ValueError(f"task {x} failed on purpose")' in text, text
    else:
        raise AssertionError("the task's ValueError was not raised")


def check_return_exceptions(backend: str | Backend, n_jobs: int = 2) -> None:
    """``return_exceptions=True`` puts each task's exception in its result's place."""
    out = Parallel(n_jobs=n_jobs, backend=backend, return_exceptions=True)(
        delayed(raise_at)(i, 7) for i in range(20)
    )
    assert len(out) == 20
    assert isinstance(out[7], ValueError)
    assert [v for i, v in enumerate(out) if i != 7] == [i for i in range(20) if i != 7]


def check_empty_and_single(backend: str | Backend, n_jobs: int = 2) -> None:
    """No task gives an empty result in every mode; one task gives one result."""
    for mode in ("list", "generator", "generator_unordered"):
        assert list(Parallel(n_jobs=n_jobs, backend=backend, return_as=mode)([])) == []
    assert Parallel(n_jobs=n_jobs, backend=backend)([delayed(square)(3)]) == [9]


def check_many_tasks(backend: str | Backend, n_jobs: int = 2) -> None:
    """10,000 tiny tasks (automatic batching) give every result, in order."""
    out = Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(10_000))
    assert out == [i * i for i in range(10_000)]


def check_arguments(backend: str | Backend, n_jobs: int = 2) -> None:
    """Keyword arguments, mixed functions, and joblib-style ``(f, args, kwargs)`` triples."""
    tasks = [delayed(add)(1, y=2), delayed(square)(4), (add, (5,), {"y": 1}), (square, [2], None)]
    assert Parallel(n_jobs=n_jobs, backend=backend)(tasks) == [3, 16, 6, 4]


def check_nested(backend: str | Backend, n_jobs: int = 2) -> None:
    """A parallel call inside a task runs, never on its parent's pool, and never deadlocks."""
    out = Parallel(n_jobs=n_jobs, backend=backend)(delayed(nested_sum)(x, -1) for x in range(6))
    assert [total for total, _, _ in out] == [sum(i * i for i in range(x)) for x in range(6)]
    if not _capabilities(backend).inline:
        assert all(level == 1 for _, _, level in out), out
        assert all(name in ("threads", "sequential") for _, name, _ in out), out


def check_timeout(backend: str | Backend, n_jobs: int = 2) -> None:
    """A stuck task raises TaskTimeoutError (a TimeoutError) and is stopped where possible."""
    caps = _capabilities(backend)
    seconds = 1.5
    t0 = time.monotonic()
    try:
        Parallel(n_jobs=n_jobs, backend=backend, timeout=0.5)(
            delayed(sleep_at)(i, 3, seconds) for i in range(8)
        )
    except TaskTimeoutError as exc:
        assert isinstance(exc, TimeoutError)
        assert 3 in exc.tasks, exc.tasks
    else:
        raise AssertionError("TaskTimeoutError was not raised")
    elapsed = time.monotonic() - t0
    if not caps.inline:
        assert elapsed < seconds, f"left the call after {elapsed:.2f} s, not at the timeout"
    if not caps.can_kill:
        # The stuck task cannot be stopped; let it end before the next check.
        time.sleep(max(0.0, seconds - elapsed) + 0.2)


def check_call_after_timeout(backend: str | Backend, n_jobs: int = 2) -> None:
    """The call right after a timeout works: the kill of the stuck task (and of the tasks
    that were finishing around it) reaches none of the next call's tasks."""
    if not _capabilities(backend).can_kill:
        return
    for _ in range(5):
        try:
            Parallel(n_jobs=n_jobs, backend=backend, batch_size=1, timeout=0.3)(
                delayed(sleep_at)(i, 30, 60) if i == 30 else delayed(jittered_square)(i)
                for i in range(400)
            )
        except TaskTimeoutError:
            pass
        else:
            raise AssertionError("TaskTimeoutError was not raised")
        out = Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(20))
        assert out == [i * i for i in range(20)]


def check_timeout_after_an_early_end(backend: str | Backend, n_jobs: int = 2) -> None:
    """A call ended by a task's error may leave its running tasks to run out (a thread
    cannot be stopped, and only a kill stops a process's task); the next call's timeout
    counts the time its own tasks run, not its wait for those workers to be free."""
    if _capabilities(backend).inline:
        return
    seconds = 1.0
    t0 = time.monotonic()
    try:
        Parallel(n_jobs=n_jobs, backend=backend, batch_size=1, pre_dispatch=n_jobs + 1)(
            delayed(raise_at_else_sleep)(i, 0, seconds) for i in range(2 * n_jobs + 2)
        )
    except ValueError:
        pass
    else:
        raise AssertionError("ValueError was not raised")
    out = Parallel(n_jobs=n_jobs, backend=backend, timeout=seconds / 2)(
        delayed(square)(i) for i in range(4)
    )
    assert out == [0, 1, 4, 9]
    # Before the next check: let the tasks left running end.
    time.sleep(max(0.0, t0 + seconds + 0.5 - time.monotonic()))


def check_timeout_kills(backend: str | Backend, n_jobs: int = 2, tmp_dir: str = "") -> None:
    """On a backend that can kill, the worker running the stuck task is gone after a timeout."""
    if not _capabilities(backend).can_kill:
        return
    import tempfile

    import psutil

    with tempfile.TemporaryDirectory(prefix="parlay-test-", dir=tmp_dir or None) as folder:
        pid_file = os.path.join(folder, "pid")
        try:
            Parallel(n_jobs=n_jobs, backend=backend, timeout=1.0)(
                delayed(sleep_at)(i, 2, 60, pid_file) for i in range(6)
            )
        except TaskTimeoutError:
            pass
        else:
            raise AssertionError("TaskTimeoutError was not raised")
        with open(pid_file) as f:
            pid = int(f.read())
        deadline = time.monotonic() + 5
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            if psutil.pid_exists(pid):
                raise AssertionError(f"the worker {pid} running the stuck task is still alive")
    assert Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(4)) == [
        0,
        1,
        4,
        9,
    ]


def check_dead_worker(backend: str | Backend, n_jobs: int = 2) -> None:
    """A worker that dies gives WorkerDiedError naming the task, then the next call works."""
    if not _capabilities(backend).separate_processes:
        return  # os._exit would end the caller's own process
    for dying in (exit_at, kill_self_at):
        t0 = time.monotonic()
        try:
            Parallel(n_jobs=n_jobs, backend=backend)(delayed(dying)(i, 7) for i in range(30))
        except WorkerDiedError as exc:
            assert 7 in exc.tasks, exc.tasks
        else:
            raise AssertionError(f"{dying.__name__}: WorkerDiedError was not raised")
        assert time.monotonic() - t0 < 10, f"{dying.__name__}: took {time.monotonic() - t0} s"
        out = Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(10))
        assert out == [i * i for i in range(10)]


def _appears(path: str, seconds: float) -> bool:
    """Whether `path` exists within `seconds`."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def check_dead_worker_stops_the_call(backend: str | Backend, n_jobs: int = 2) -> None:
    """A call that fails because a worker died leaves none of its tasks running.

    The consumer of a generator holds the call back so that a batch is sent after the
    death but before the call sees it (on a cluster, to another worker, where it starts;
    a process pool must not move it to the pool that replaced the broken one); that batch
    must not finish once the call has failed.
    """
    if not _capabilities(backend).separate_processes:
        return
    import tempfile

    seconds = 2.0
    with tempfile.TemporaryDirectory(prefix="parlay-test-") as folder:
        tasks = [
            delayed(square)(0),
            delayed(exit_after)(0.3, folder),
            delayed(mark_after)(folder, seconds),
        ]
        results = Parallel(
            n_jobs=n_jobs, backend=backend, batch_size=1, pre_dispatch=2, return_as="generator"
        )(tasks)
        # Task 1 kills its worker while the consumer waits; the engine notices it at once
        # (a second is ample even on a loaded machine).
        if not _appears(os.path.join(folder, "dying"), 60):
            raise AssertionError("task 1 never ran")
        time.sleep(1.0)
        assert next(results) == 0  # sends task 2, to a live worker (or fails it at once)
        # Where task 2 runs (a cluster's other worker), let it start: the check is that
        # it is stopped. A process pool fails it instead: its pool is gone.
        _appears(os.path.join(folder, "started"), 10)
        try:
            next(results)
        except WorkerDiedError as exc:
            assert 1 in exc.tasks, exc.tasks
        else:
            raise AssertionError("WorkerDiedError was not raised")
        time.sleep(seconds + 1.0)
        if os.path.exists(os.path.join(folder, "finished")):
            raise AssertionError("a task of the failed call went on running after it failed")
    assert Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(4)) == [
        0,
        1,
        4,
        9,
    ]


def check_serialization_errors(backend: str | Backend, n_jobs: int = 2) -> None:
    """Each (un)pickling stage fails with SerializationError naming the task, never a hang."""
    if not _capabilities(backend).separate_processes:
        return
    stages: list[tuple[str, list[Any]]] = [
        ("argument cannot be pickled", [delayed(square)(1), delayed(id)(Unpicklable())]),
        ("argument cannot be unpickled in the worker", [delayed(id)(FailsToUnpickle())]),
        ("result cannot be pickled", [delayed(square)(1), delayed(return_unpicklable)(1)]),
        ("result cannot be unpickled", [delayed(return_fails_to_unpickle)(1)]),
    ]
    for stage, tasks in stages:
        try:
            Parallel(n_jobs=n_jobs, backend=backend, batch_size=1)(tasks)
        except SerializationError as exc:
            assert "task" in str(exc), (stage, str(exc))
        else:
            raise AssertionError(f"{stage}: SerializationError was not raised")
    assert Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(3)) == [
        0,
        1,
        4,
    ]
    pickle.dumps(SerializationError("x"))  # the error itself must travel


CHECKS: dict[str, Check] = {
    check.__name__.removeprefix("check_"): check
    for check in (
        check_order,
        check_generators,
        check_generator_closed_early,
        check_task_exception,
        check_return_exceptions,
        check_empty_and_single,
        check_many_tasks,
        check_arguments,
        check_nested,
        check_timeout,
        check_timeout_kills,
        check_call_after_timeout,
        check_timeout_after_an_early_end,
        check_dead_worker,
        check_dead_worker_stops_the_call,
        check_serialization_errors,
    )
}


def check_backend(backend: str | Backend, n_jobs: int = 2) -> None:
    """Run every conformance check on `backend`; raise AssertionError at the first failure.

    Parameters
    ----------
    backend : str or Backend
        A registered backend name or an instance.
    n_jobs : int, default=2
        Workers to use in each check.
    """
    for check in CHECKS.values():
        check(backend, n_jobs=n_jobs)
