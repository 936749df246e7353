"""Fixtures: the backend each generic test runs on, and the leak checks every test gets."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import parlay

# Backends every backend-generic test runs on; a backend is skipped only when its extra is
# not installed.
BACKENDS = ["sequential", "threads", "processes", "dask", "ray"]

# Process-wide helpers that engines start once and keep for the life of the interpreter.
_SINGLETON_CHILDREN = ("resource_tracker",)
# Threads that engines start once per interpreter and keep: distributed's callback pool,
# and the event loop its synchronous clients share (a client that failed to connect leaves it).
_SINGLETON_THREADS = ("Dask-Callback-Thread", "Dask-Offload", "IO loop", "tqdm_monitor")
_SHM_PREFIXES = ("parlay", "loky", "joblib", "psm_")
# Set by pytest itself, and by importing joblib (which parallel_config does when installed)
# or scikit-learn.
_ENV_SET_BY_IMPORTS = {"PYTEST_CURRENT_TEST", "KMP_INIT_AT_FORK", "KMP_DUPLICATE_LIB_OK"}
# Processes and threads of the engines the test session starts once (a Dask LocalCluster,
# a local Ray): they outlive single tests on purpose, so the leak check skips them and
# their descendants (a restarted Dask worker is a new child of its nanny).
_ENGINE_PIDS: set[int] = set()
_ENGINE_THREAD_PREFIXES = ("IO loop", "Dask-", "TCP-Executor", "AsyncProcess", "ray_", "Thread-")
_engines_started: set[str] = set()


def _own(pids_before: set[int], threads_before: set[threading.Thread]) -> None:
    _ENGINE_PIDS.update(p.pid for p in psutil.Process().children() if p.pid not in pids_before)
    _ENGINE_THREADS.update(set(threading.enumerate()) - threads_before)


_ENGINE_THREADS: set[threading.Thread] = set()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Pickle the test modules' functions by value: cluster workers cannot import them."""
    import cloudpickle

    for module in {item.module for item in session.items if isinstance(item, pytest.Function)}:
        cloudpickle.register_pickle_by_value(module)


_dask_session: list[Any] = []  # the session's EmbeddedCluster, once started
_dask_lost: list[str] = []  # why it was found without its workers, if ever


def _dask_whole() -> None:
    """Fail at once, naming the cause, when the session's cluster has lost its workers.

    Its tasks would queue forever: each test would hang until its timeout instead.
    """
    if not _dask_lost:
        try:
            _dask_session[0].client.wait_for_workers(2, timeout=30)
        except Exception as exc:
            _dask_lost.append(f"{type(exc).__name__}: {exc}")
    if _dask_lost:
        pytest.fail(f"the session's Dask cluster lost its workers ({_dask_lost[0]})")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[str]:
    """A real LocalCluster on 127.0.0.1, shared by the session; parlay reaches it by address.

    It runs in parlay's host process for embedded clusters, so that its nannies' threads,
    environment variables and worker processes stay out of the test process.
    """
    pytest.importorskip("distributed")
    from parlay._backends.dask import EmbeddedCluster

    pids = {p.pid for p in psutil.Process().children()}
    threads = set(threading.enumerate())
    cluster = EmbeddedCluster(2)
    _dask_session.append(cluster)
    _own(pids, threads)
    _engines_started.add("dask")
    os.environ["PARLAY_DASK_ADDRESS"] = cluster.address
    try:
        yield cluster.address
    finally:
        os.environ.pop("PARLAY_DASK_ADDRESS", None)
        _dask_session.clear()
        cluster.close()


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """A real local Ray, shared by the session; parlay uses it as the user's Ray."""
    ray = pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="parlay-test-ray-")
    pids = {p.pid for p in psutil.Process().children()}
    threads = set(threading.enumerate())
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        _temp_dir=folder,
        _node_ip_address="127.0.0.1",
    )
    _own(pids, threads)
    _engines_started.add("ray")
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test (cluster engines started once per session)."""
    name = str(request.param)
    if name == "dask":
        request.getfixturevalue("dask_cluster")
        _dask_whole()
    elif name == "ray":
        request.getfixturevalue("ray_runtime")
    return name


def _children() -> dict[int, str]:
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if any(name in cmdline for name in _SINGLETON_CHILDREN):
            continue
        try:
            lineage = {child.pid, *(parent.pid for parent in child.parents())}
        except psutil.Error:
            continue
        if not lineage & _ENGINE_PIDS:
            found[child.pid] = cmdline
    return found


def _shm() -> set[str]:
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return set()
    # Other programs on the machine use /dev/shm too: count only parlay's segments and
    # those an engine named after this process.
    mine = f"_{os.getpid()}_"
    return {
        n for n in names if n.startswith(_SHM_PREFIXES) and (n.startswith("parlay") or mine in n)
    }


def _native_threads() -> dict[str, int]:
    """The threads each native pool (BLAS, OpenMP) loaded in this process may use."""
    import threadpoolctl

    return {pool["filepath"]: pool["num_threads"] for pool in threadpoolctl.threadpool_info()}


def _wait_until(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _ours(names: set[str]) -> set[str]:
    """The parlay segments made by this process or one of its children (by the pid in
    their name): another test run on the same machine makes its own."""
    pids = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    pids |= _ENGINE_PIDS

    def creator(name: str) -> int | None:
        parts = name.split("-")
        return int(parts[1]) if name.startswith("parlay-") and parts[1].isdigit() else None

    return {n for n in names if creator(n) is None or creator(n) in pids}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a process, thread, /dev/shm segment or env change behind.

    parlay keeps its pools open between calls on purpose; ``parlay.shutdown()`` must
    close them, so the check runs after it.
    """
    started = set(_engines_started)
    threads_before = set(threading.enumerate())
    children_before = set(_children())
    shm_before = _shm()
    env_before = dict(os.environ)
    native_before = _native_threads()
    yield
    parlay.shutdown()
    if _engines_started != started:
        # A session engine started inside this test: what it started is not a leak.
        threads_before |= _ENGINE_THREADS
        children_before |= set(_children())
        # ray.init sets variables for its driver (RAY_*, PYTHONBREAKPOINT): Ray's doing.
        for name in os.environ:
            if name in ("PARLAY_DASK_ADDRESS", "PYTHONBREAKPOINT") or name.startswith("RAY_"):
                env_before[name] = os.environ[name]
    _wait_until(lambda: not (set(_children()) - children_before), 10)
    leaked_children = {p: c for p, c in _children().items() if p not in children_before}
    _wait_until(lambda: not (set(threading.enumerate()) - threads_before), 5)
    leaked_threads = [
        t.name
        for t in set(threading.enumerate()) - threads_before
        if t.is_alive()
        and not t.name.startswith(_SINGLETON_THREADS)
        and not (_engines_started and t.name.startswith(_ENGINE_THREAD_PREFIXES))
    ]
    leaked_shm = _ours(_shm() - shm_before)
    if leaked_shm:
        # parlay.share() segments go with their arrays: collect the test's cycles first.
        gc.collect()
        leaked_shm = _ours(_shm() - shm_before)
    env_changed = sorted(
        k
        for k in set(env_before) | set(os.environ)
        if env_before.get(k) != os.environ.get(k) and k not in _ENV_SET_BY_IMPORTS
    )
    problems = []
    if leaked_children:
        problems.append(f"child processes left running: {leaked_children}")
    if leaked_threads:
        problems.append(f"threads left running: {leaked_threads}")
    if leaked_shm:
        problems.append(f"shared-memory segments left in /dev/shm: {sorted(leaked_shm)}")
    if env_changed:
        problems.append(f"environment variables changed: {env_changed}")
    native_after = _native_threads()
    changed = {
        path: (n, native_after[path])
        for path, n in native_before.items()
        if path in native_after and native_after[path] != n
    }
    if changed:
        problems.append(f"native thread pools left changed (before, after): {changed}")
    if problems:
        pytest.fail("; ".join(problems))
