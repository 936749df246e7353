"""Code written for joblib gives the same results through parlay."""

from __future__ import annotations

import glob
import math
import os
import shutil
from collections.abc import Iterator

import pytest

import parlay
from parlay.testing import add, square

joblib = pytest.importorskip("joblib")


@pytest.fixture(autouse=True)
def close_joblibs_pool() -> Iterator[None]:
    """joblib keeps its loky pool for the process's life; close it so leaks stay visible."""
    yield
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
    # joblib leaves its (empty) memmapping folder in /dev/shm until the interpreter exits.
    for folder in glob.glob(f"/dev/shm/joblib_memmapping_folder_{os.getpid()}_*"):
        shutil.rmtree(folder, ignore_errors=True)


CALLS = [
    ("squares", lambda P, d: P(n_jobs=2)(d(square)(i) for i in range(50))),
    ("kwargs", lambda P, d: P(n_jobs=2)(d(add)(i, y=i) for i in range(20))),
    ("builtin", lambda P, d: P(n_jobs=2)(d(math.factorial)(i) for i in range(15))),
    ("threads", lambda P, d: P(n_jobs=2, backend="threading")(d(abs)(-i) for i in range(9))),
    ("loky", lambda P, d: P(n_jobs=2, backend="loky")(d(square)(i) for i in range(9))),
    ("prefer", lambda P, d: P(n_jobs=2, prefer="threads")(d(square)(i) for i in range(9))),
    ("sharedmem", lambda P, d: P(n_jobs=2, require="sharedmem")(d(square)(i) for i in range(9))),
    ("n_jobs=1", lambda P, d: P(n_jobs=1)(d(square)(i) for i in range(9))),
    ("n_jobs=-1", lambda P, d: P(n_jobs=-1)(d(square)(i) for i in range(9))),
    ("batch_size", lambda P, d: P(n_jobs=2, batch_size=4)(d(square)(i) for i in range(9))),
    ("pre_dispatch", lambda P, d: P(n_jobs=2, pre_dispatch="all")(d(square)(i) for i in range(9))),
    ("empty", lambda P, d: P(n_jobs=2)([])),
    (
        "generator",
        lambda P, d: list(P(n_jobs=2, return_as="generator")(d(square)(i) for i in range(9))),
    ),
    (
        "unordered",
        lambda P, d: sorted(
            P(n_jobs=2, return_as="generator_unordered")(d(square)(i) for i in range(9))
        ),
    ),
    ("joblib tuples", lambda P, d: P(n_jobs=2)([(square, (3,), {}), (add, (1,), {"y": 2})])),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
def test_same_results_as_joblib(name: str, call) -> None:  # type: ignore[no-untyped-def]
    expected = call(joblib.Parallel, joblib.delayed)
    assert call(parlay.Parallel, parlay.delayed) == expected


def test_joblib_delayed_tasks_run_on_parlay() -> None:
    tasks = [joblib.delayed(square)(i) for i in range(5)]
    assert parlay.Parallel(n_jobs=2)(tasks) == [0, 1, 4, 9, 16]


def test_same_exception_type_as_joblib() -> None:
    from parlay.testing import raise_at

    for Parallel, delayed in ((joblib.Parallel, joblib.delayed), (parlay.Parallel, parlay.delayed)):
        with pytest.raises(ValueError, match="task 3 failed on purpose"):
            Parallel(n_jobs=2)(delayed(raise_at)(i, 3) for i in range(6))


def test_same_n_jobs_arithmetic_as_joblib() -> None:
    for n_jobs in (-1, -2, 1, 2, 5):
        assert parlay.effective_n_jobs(n_jobs) == joblib.effective_n_jobs(n_jobs)
    assert parlay.cpu_count() == joblib.cpu_count()
