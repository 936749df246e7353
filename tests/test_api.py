"""The front door: validation, precedence, explain, sessions, exports."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import subprocess
import sys
import threading
import weakref
from typing import Any

import numpy as np
import pytest

import parlay
from conftest import _wait_until
from parlay import Parallel, Task, delayed, effective_n_jobs, parallel_config
from parlay.testing import square


def pid(_: object = None) -> int:
    return os.getpid()


def thread_name(_: object = None) -> str:
    return threading.current_thread().name


# -- bad input --------------------------------------------------------------------------

BAD_PARALLEL = [
    ({"n_jobs": "x"}, TypeError, "n_jobs"),
    ({"n_jobs": 0}, ValueError, "n_jobs=0"),
    ({"n_jobs": 1.5}, TypeError, "n_jobs"),
    ({"n_jobs": True}, TypeError, "n_jobs"),
    ({"backend": "nope"}, ValueError, "known backends: .*threads"),
    ({"backend": 3}, TypeError, "backend"),
    ({"prefer": "gpu"}, ValueError, "prefer must be one of None, 'threads', 'processes'"),
    ({"require": "gil"}, ValueError, "require must be one of None, 'sharedmem'"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": "big"}, ValueError, "batch_size"),
    ({"return_as": "set"}, ValueError, "return_as must be one of 'list', 'generator'"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
    ({"pre_dispatch": "3 * n_workers"}, ValueError, "pre_dispatch"),
    ({"pre_dispatch": 0}, ValueError, "pre_dispatch"),
    ({"pre_dispatch": "__import__('os').getpid()"}, ValueError, "pre_dispatch"),
    ({"pre_dispatch": "n_jobs / 0"}, ValueError, "pre_dispatch"),
    ({"max_nbytes": -1.0}, ValueError, "max_nbytes"),
    ({"max_nbytes": float("nan")}, ValueError, "max_nbytes"),
    ({"verbose": -1}, ValueError, "verbose"),
    ({"verbose": "loud"}, TypeError, "verbose"),
    ({"max_nbytes": "1X"}, ValueError, "max_nbytes"),
    ({"mmap_mode": "rw"}, ValueError, "mmap_mode"),
    ({"temp_folder": 3}, TypeError, "temp_folder"),
    ({"return_exceptions": "yes"}, TypeError, "return_exceptions"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_PARALLEL)
def test_parallel_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Parallel(**kwargs)  # type: ignore[arg-type]


CONFIG_KEYS = {"n_jobs", "backend", "prefer", "require", "verbose", "max_nbytes", "mmap_mode"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), [row for row in BAD_PARALLEL if set(row[0]) <= CONFIG_KEYS]
)
def test_parallel_config_rejects_bad_input(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        parallel_config(**kwargs)  # type: ignore[arg-type]


def test_parallel_config_backend_params_need_a_backend() -> None:
    with pytest.raises(TypeError, match="without a backend"):
        parallel_config(address="tcp://127.0.0.1:1")
    with (
        pytest.raises(TypeError, match="takes no parameters"),
        parallel_config(backend="threads", address="x"),
    ):
        Parallel(n_jobs=2).explain()


def test_delayed_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="delayed\\(\\) needs a callable"):
        delayed(3)  # type: ignore[arg-type]
    # Not even None, which an empty cache of delayed's last function could mistake.
    with pytest.raises(TypeError, match="delayed\\(\\) needs a callable"):
        delayed(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [3, "f", (square, 1, {}), (square, (1,)), (1, (), {})])
def test_tasks_must_be_delayed_calls(backend: str, bad: object) -> None:
    tasks = [delayed(square)(1), bad]
    with pytest.raises(TypeError, match="task 1 is not a delayed call"):
        Parallel(n_jobs=2, backend=backend)(tasks)


def test_bad_input_starts_nothing() -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match="prefer"):
        Parallel(n_jobs=2, backend="threads", prefer="gpu")
    assert threading.active_count() == threads


# -- delayed and Task ---------------------------------------------------------------------


def test_task_unpacks_like_joblib_and_is_immutable() -> None:
    task = delayed(pow)(2, 5)
    func, args, kwargs = task
    assert (func, args, kwargs) == (pow, (2, 5), {})
    assert isinstance(task, Task)
    with pytest.raises(AttributeError):
        task.args = ()  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(task)) == task


def test_task_runs_when_called_and_shows_its_call() -> None:
    task = delayed(pow)(2, exp=5)
    assert task() == 32
    assert (task.func, task.args, task.kwargs) == (pow, (2,), {"exp": 5})
    assert repr(task) == "Task(pow(2, exp=5))"
    assert task == delayed(pow)(2, exp=5)
    assert task != delayed(pow)(2, exp=6)
    with pytest.raises(TypeError):
        hash(task)


def test_joblib_triples_and_tasks_mix(backend: str) -> None:
    tasks = [delayed(square)(1), (square, (2,), None), (square, [3], {}), delayed(pow)(2, exp=3)]
    assert Parallel(n_jobs=2, backend=backend)(tasks) == [1, 4, 9, 8]


def test_delayed_gives_each_function_its_own_tasks_across_threads() -> None:
    # delayed keeps its last wrapper: threads alternating two functions must still get
    # tasks of the function they asked for.
    def make(func: Any, out: list[Task[int]]) -> None:
        for i in range(20_000):
            out.append(delayed(func)(i))

    made: dict[Any, list[Task[int]]] = {square: [], abs: []}
    threads = [threading.Thread(target=make, args=(f, made[f])) for f in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for func, tasks in made.items():
        assert all(task.func is func for task in tasks)
        assert [task.args[0] for task in tasks] == list(range(20_000))


def test_a_call_keeps_no_function_given_to_delayed_alive(backend: str) -> None:
    def make_function(payload: list[int]) -> Any:
        def total(i: int) -> int:
            return i + len(payload)

        return total

    func = make_function([0] * 1000)
    alive = weakref.ref(func)
    assert Parallel(n_jobs=2, backend=backend)(delayed(func)(i) for i in range(5)) == [
        1000,
        1001,
        1002,
        1003,
        1004,
    ]
    del func
    gc.collect()
    assert alive() is None, "the function given to delayed outlived the call"
    # A generator of results never read: the call started, and never ends.
    func = make_function([0] * 1000)
    alive = weakref.ref(func)
    results = Parallel(n_jobs=2, backend=backend, return_as="generator")(
        delayed(func)(i) for i in range(5)
    )
    del func, results
    # The batches already sent hold it until they are done.
    assert _wait_until(lambda: gc.collect() >= 0 and alive() is None, 10), (
        "the function given to delayed outlived a call never read"
    )


def test_shutdown_lets_go_of_the_function_last_given_to_delayed() -> None:
    def total(i: int) -> int:
        return i

    alive = weakref.ref(total)
    delayed(total)(1)  # tasks made, never run
    del total
    parlay.shutdown()
    gc.collect()
    assert alive() is None


def test_delayed_keeps_the_function_name() -> None:
    assert delayed(square).__name__ == "square"
    assert delayed(square).__wrapped__ is square  # type: ignore[attr-defined]


# -- precedence -----------------------------------------------------------------------------


def test_explicit_beats_context_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLAY_BACKEND", "processes")
    monkeypatch.setenv("PARLAY_N_JOBS", "3")
    decision = Parallel().explain()
    assert (decision.backend, decision.n_jobs) == ("processes", 3)
    assert "PARLAY_N_JOBS" in str(decision)
    with parallel_config(backend="threads", n_jobs=2):
        assert (Parallel().explain().backend, Parallel().explain().n_jobs) == ("threads", 2)
        decision = Parallel(n_jobs=4, backend="processes").explain()
        assert (decision.backend, decision.n_jobs) == ("processes", 4)


def test_bad_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLAY_N_JOBS", "many")
    with pytest.raises(ValueError, match="PARLAY_N_JOBS"):
        Parallel().explain()
    monkeypatch.setenv("PARLAY_N_JOBS", "0")
    with pytest.raises(ValueError, match="PARLAY_N_JOBS"):
        Parallel().explain()
    monkeypatch.delenv("PARLAY_N_JOBS")
    monkeypatch.setenv("PARLAY_BACKEND", "gpu")
    with pytest.raises(ValueError, match="PARLAY_BACKEND"):
        Parallel().explain()


def test_parallel_config_nests_and_restores() -> None:
    assert Parallel().explain().n_jobs == 1
    with parallel_config(n_jobs=2, backend="threads"):
        with parallel_config(n_jobs=3):
            decision = Parallel().explain()
            assert (decision.backend, decision.n_jobs) == ("threads", 3)
        assert Parallel().explain().n_jobs == 2
    assert Parallel().explain().n_jobs == 1


def test_parallel_config_is_per_thread() -> None:
    seen: dict[str, str] = {}
    entered = threading.Barrier(2)

    def worker(name: str, backend: str) -> None:
        with parallel_config(backend=backend, n_jobs=2):
            entered.wait(timeout=5)
            seen[name] = Parallel().explain().backend
            entered.wait(timeout=5)

    threads = [
        threading.Thread(target=worker, args=("a", "threads")),
        threading.Thread(target=worker, args=("b", "processes")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seen == {"a": "threads", "b": "processes"}
    assert Parallel().explain().backend == "sequential"


def test_context_reaches_tasks_on_every_backend(backend: str) -> None:
    def inner_backend(_: int) -> str:
        return Parallel(n_jobs=2).explain().backend

    with parallel_config(backend="threads"):
        out = Parallel(n_jobs=2, backend=backend)(delayed(inner_backend)(i) for i in range(2))
    # Inline tasks see the context as it is; in a worker, the outer context does not pick the
    # nested backend, and with one core per task the nested call runs inline.
    assert set(out) <= {"threads", "sequential"}


def test_require_sharedmem_writes_into_the_callers_array(backend: str) -> None:
    import numpy as np

    out = np.zeros(20)

    def fill(i: int) -> None:
        out[i] = i

    with parallel_config(backend=backend):
        Parallel(n_jobs=2, require="sharedmem")(delayed(fill)(i) for i in range(20))
    assert out.tolist() == list(range(20))


def test_explain_does_not_start_workers() -> None:
    before = threading.active_count()
    decision = Parallel(n_jobs=2, backend="threads").explain()
    assert threading.active_count() == before
    assert decision.backend == "threads"
    assert "n_jobs=2" in repr(decision)


def test_effective_n_jobs() -> None:
    assert effective_n_jobs(-1) == parlay.cpu_count()
    assert effective_n_jobs(1) == 1
    assert effective_n_jobs(None) == 1
    with parallel_config(n_jobs=2):
        assert effective_n_jobs(None) == 2


def test_cpu_count() -> None:
    assert parlay.cpu_count() >= 1
    assert parlay.cpu_count(only_physical_cores=True) >= 1
    with pytest.raises(TypeError, match="only_physical_cores"):
        parlay.cpu_count("yes")  # type: ignore[arg-type]


# -- sessions ---------------------------------------------------------------------------


def test_pool_is_reused_across_calls() -> None:
    import psutil

    def workers() -> set[int]:
        return {
            p.pid for p in psutil.Process().children() if "LokyProcess" in " ".join(p.cmdline())
        }

    first = Parallel(n_jobs=2, backend="processes")(delayed(pid)(i) for i in range(8))
    pool = workers()
    second = Parallel(n_jobs=2, backend="processes")(delayed(pid)(i) for i in range(8))
    assert os.getpid() not in first
    assert len(pool) == 2
    assert workers() == pool, "the second call started new worker processes"
    assert set(first) | set(second) <= pool


def test_context_manager_holds_one_session() -> None:
    with Parallel(n_jobs=2, backend="threads") as p:
        a = set(p(delayed(thread_name)(i) for i in range(10)))
        b = set(p(delayed(thread_name)(i) for i in range(10)))
        assert p.explain().backend == "threads"
    assert a | b <= {f"parlay-thread_{i}" for i in range(2)}


def test_nested_context_manager_closes_only_its_own_pool() -> None:
    def inner(_: int) -> int:
        with Parallel(n_jobs=2, backend="threads") as p:
            return sum(p(delayed(square)(i) for i in range(4)))

    with Parallel(n_jobs=2, backend="threads") as outer:
        # Where two inner threads exceed each task's share of the cores, it warns.
        budget = outer.explain().inner_budget
        warns = pytest.warns(ResourceWarning, match="oversubscribe")
        with warns if budget < 2 else contextlib.nullcontext():
            assert outer(delayed(inner)(i) for i in range(4)) == [14] * 4
        assert outer(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_three_levels_of_nesting(backend: str) -> None:
    def level3(x: int) -> int:
        return x + 1

    def level2(x: int) -> int:
        return sum(Parallel(n_jobs=-1)(delayed(level3)(i) for i in range(x)))

    def level1(x: int) -> int:
        return sum(Parallel(n_jobs=-1)(delayed(level2)(i) for i in range(x)))

    out = Parallel(n_jobs=2, backend=backend)(delayed(level1)(x) for x in range(5))
    assert out == [sum(sum(i + 1 for i in range(y)) for y in range(x)) for x in range(5)]


# -- the public surface -------------------------------------------------------------------


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in dir(parlay) if not name.startswith("_")}
    modules = {"testing", "joblib"}  # public submodules, present once imported
    assert sorted(parlay.__all__) == parlay.__all__
    assert set(parlay.__all__) == public - modules - {"_api"}


def test_exports_say_parlay() -> None:
    for name in parlay.__all__:
        assert getattr(parlay, name).__module__ == "parlay", name


def test_import_is_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import parlay; "
        "print(time.perf_counter() - t); "
        "print(' '.join(m for m in ('dask', 'distributed', 'ray', 'joblib', 'sklearn', "
        "'tqdm', 'rich', 'loky', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[1] == "", f"import parlay imported {out[1]}"


# -- joblib's documented forms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pre_dispatch", "n_jobs", "in_flight"),
    [("1.5*n_jobs", 2, 3), ("n_jobs + 1", 2, 3), ("2 * n_jobs", 3, 6), ("n_jobs // 2", 1, 1)],
)
def test_pre_dispatch_takes_joblibs_arithmetic(
    pre_dispatch: str, n_jobs: int, in_flight: int
) -> None:
    from parlay._api import _pre_dispatch_batches

    Parallel(pre_dispatch=pre_dispatch)  # accepted, as in joblib's Parallel docstring
    assert _pre_dispatch_batches(pre_dispatch, n_jobs) == in_flight


def has_its_own_buffer(array: np.ndarray) -> bool:
    """False for an array mapped from a shared copy (its memory is an mmap)."""
    import mmap

    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return not isinstance(array, mmap.mmap)


def test_max_nbytes_from_parallel_config_and_as_a_float() -> None:
    big = np.ones(300_000)  # 2.4 MB
    with parallel_config(backend="processes", n_jobs=2, max_nbytes=None):
        # Not shared: each batch carries its own copy (the pickled array owns its data).
        assert Parallel(batch_size=1)([delayed(has_its_own_buffer)(big)]) == [True]
    with parallel_config(backend="processes", n_jobs=2):
        assert Parallel(max_nbytes=1e6)([delayed(has_its_own_buffer)(big)]) == [False]
        assert Parallel(max_nbytes=1e7)([delayed(has_its_own_buffer)(big)]) == [True]


def test_verbose_from_parallel_config_logs_each_call(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="parlay"), parallel_config(verbose=5):
        Parallel(n_jobs=2, backend="threads")(delayed(abs)(-i) for i in range(5))
    messages = [r.getMessage() for r in caplog.records if r.name == "parlay"]
    assert any(m.startswith("Parallel: backend='threads'") for m in messages), messages
    assert any("done: 5 tasks on 'threads' with 2 workers" in m for m in messages), messages
