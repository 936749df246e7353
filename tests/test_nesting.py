"""Nested parallelism: every outer backend x every kind of inner call, never a deadlock."""

from __future__ import annotations

import os

import numpy as np
import pytest

import parlay
from parlay import Parallel, delayed, parallel_config

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402

X, y = make_classification(n_samples=120, n_features=6, random_state=0)


def inner_parlay(i: int) -> tuple[int, int]:
    decision = Parallel(n_jobs=-1).explain()
    total = sum(Parallel(n_jobs=-1)(delayed(abs)(-j) for j in range(i + 3)))
    return total, decision.n_jobs


def inner_joblib(i: int) -> tuple[int, int]:
    total = sum(joblib.Parallel(n_jobs=-1)(joblib.delayed(abs)(-j) for j in range(i + 3)))
    return total, joblib.effective_n_jobs(-1)


def inner_sklearn(i: int) -> tuple[float, int]:
    model = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=i, n_jobs=-1)
    return float(model.fit(X, y).score(X, y)), 0


INNER = {"parlay": inner_parlay, "joblib": inner_joblib, "sklearn": inner_sklearn}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("inner", sorted(INNER))
def test_nested_calls_finish_on_every_backend(backend: str, inner: str) -> None:
    func = INNER[inner]
    with parallel_config(backend=backend):
        out = Parallel(n_jobs=2, batch_size=1)(delayed(func)(i) for i in range(4))
    if inner == "sklearn":
        assert all(0.5 < score <= 1.0 for score, _ in out)
    else:
        assert [total for total, _ in out] == [sum(range(i + 3)) for i in range(4)]
    if inner == "parlay" and backend not in ("sequential", "dask"):
        # Inside a task, n_jobs=-1 is the task's share of the cores.
        budget = max(1, parlay.cpu_count() // 2)
        assert {n for _, n in out} == {budget}, out


@pytest.mark.timeout(120)
def test_one_worker_with_one_thread_does_not_deadlock_on_dask() -> None:
    pytest.importorskip("distributed")
    from parlay._backends.dask import EmbeddedCluster
    from parlay.testing import nested_sum

    cluster = EmbeddedCluster(1)
    try:
        with parallel_config(backend="dask", address=cluster.address):
            # n_jobs=-1 inside a task is its budget, one core: inline; n_jobs=2 goes back
            # to the cluster, whose only thread the task holds: it must secede.
            out = Parallel(n_jobs=-1, batch_size=1)(
                delayed(nested_sum)(x, n) for x, n in ((3, -1), (4, 2))
            )
            fits = Parallel(n_jobs=-1)(delayed(inner_sklearn)(i) for i in range(2))
        assert [(total, backend) for total, backend, _ in out] == [(5, "sequential"), (14, "dask")]
        assert len(fits) == 2
    finally:
        parlay.shutdown()
        cluster.close()


def explicit_inner(_: int) -> int:
    return sum(Parallel(n_jobs=4, backend="threads")(delayed(abs)(-i) for i in range(3)))


def test_an_explicit_inner_n_jobs_over_the_budget_warns() -> None:
    with pytest.warns(ResourceWarning, match="oversubscribe"):
        out = Parallel(n_jobs=parlay.cpu_count(), backend="threads")(
            delayed(explicit_inner)(i) for i in range(2)
        )
    assert out == [3, 3]


def threads_of_tree() -> int:
    import psutil

    me = psutil.Process()
    return me.num_threads() + sum(p.num_threads() for p in me.children(recursive=True))


def blas_and_workers(_: int) -> tuple[str, int]:
    import threading
    import time

    import threadpoolctl

    time.sleep(0.02)  # long enough for both workers to take tasks
    info = threadpoolctl.threadpool_info()
    blas = max((pool["num_threads"] for pool in info), default=1)
    return f"{os.getpid()}-{threading.get_ident()}", blas


@pytest.mark.parametrize("outer", ["threads", "processes", "dask", "ray"])
def test_no_oversubscription_of_workers_and_native_pools(
    outer: str, request: pytest.FixtureRequest
) -> None:
    if outer == "dask":
        request.getfixturevalue("dask_cluster")
    elif outer == "ray":
        request.getfixturevalue("ray_runtime")
    np.dot(np.ones((10, 10)), np.ones((10, 10)))  # BLAS loaded here too
    n_jobs = 2
    out = Parallel(n_jobs=n_jobs, backend=outer)(delayed(blas_and_workers)(i) for i in range(8))
    workers = {worker for worker, _ in out}
    per_task = max(blas for _, blas in out)
    # Python workers running at once, times the native threads each task may use.
    assert len(workers) * per_task <= max(parlay.cpu_count(), n_jobs), out


RAY_ONE_CPU = """
import os, tempfile, shutil, logging
import ray
folder = tempfile.mkdtemp(prefix="parlay-test-ray-")
ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.ERROR, _temp_dir=folder,
         _node_ip_address="127.0.0.1")
try:
    import parlay
    from parlay import Parallel, delayed, parallel_config
    from parlay.testing import nested_sum
    with parallel_config(backend="ray"):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(nested_sum)(x, -1) for x in (3, 4, 5))
    print([total for total, _, _ in out])
finally:
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
"""


@pytest.mark.timeout(120)
def test_one_cpu_of_ray_does_not_deadlock() -> None:
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    env = {k: v for k, v in os.environ.items() if k != "PARLAY_DASK_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", RAY_ONE_CPU], capture_output=True, text=True, timeout=100, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[5, 14, 30]"
