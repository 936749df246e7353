"""Fixtures: the backend each generic test runs on, and the leak checks every test gets."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

import parlay

# Backends every backend-generic test runs on. Later engines are added here; a backend is
# skipped only when its extra is not installed.
BACKENDS = ["sequential", "threads", "processes"]

# Process-wide helpers that engines start once and keep for the life of the interpreter.
_SINGLETON_CHILDREN = ("resource_tracker",)
_SHM_PREFIXES = ("parlay", "loky", "joblib", "psm_")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


def _children() -> dict[int, str]:
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not any(name in cmdline for name in _SINGLETON_CHILDREN):
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


def _wait_until(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a process, thread, /dev/shm segment or env change behind.

    parlay keeps its pools open between calls on purpose; ``parlay.shutdown()`` must
    close them, so the check runs after it.
    """
    threads_before = set(threading.enumerate())
    children_before = set(_children())
    shm_before = _shm()
    env_before = dict(os.environ)
    yield
    parlay.shutdown()
    _wait_until(lambda: not (set(_children()) - children_before), 10)
    leaked_children = {p: c for p, c in _children().items() if p not in children_before}
    _wait_until(lambda: not (set(threading.enumerate()) - threads_before), 5)
    leaked_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    leaked_shm = _shm() - shm_before
    env_changed = sorted(
        k
        for k in set(env_before) | set(os.environ)
        if env_before.get(k) != os.environ.get(k) and k != "PYTEST_CURRENT_TEST"
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
    if problems:
        pytest.fail("; ".join(problems))
