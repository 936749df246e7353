"""Task functions run inside the workers of every benchmarked system.

They live in their own importable module so that process pools can pickle
them by reference (``benchmarks.workloads.identity``) instead of by value.
The module imports only the standard library at import time: numpy is
imported inside the tasks that need it, so that a worker's start-up does not
pay for numpy unless the workload uses it.
"""

from __future__ import annotations

import importlib
import os
import threading
import time

#: Text of the line that raises in :func:`fail_at`; F1 looks for it in the
#: formatted traceback that reaches the caller.
F1_RAISE_TEXT = 'raise ValueError(f"task {i} failed on purpose")'


def identity(i: int) -> int:
    """Return ``i`` unchanged (W1: pure dispatch cost)."""
    return i


def warm(seconds: float, imports: tuple[str, ...] = ()) -> tuple[int, int]:
    """Import ``imports``, sleep briefly, return ``(pid, thread id)`` of the worker.

    Used for the warm-up calls: they bring every worker up (with the modules
    the workload's tasks need already imported) before anything is measured.
    """
    for name in imports:
        importlib.import_module(name)
    time.sleep(seconds)
    return os.getpid(), threading.get_ident()


def spin(loops: int) -> int:
    """Pure-Python integer arithmetic that holds the GIL (W2)."""
    acc = 0
    for k in range(loops):
        acc = (acc * 31 + k) % 1_000_003
    return acc


def sort_task(seed: int, size: int, reps: int) -> float:
    """Make ``size`` random floats, sort them ``reps`` times, return the median.

    Both the generation and ``np.sort`` release the GIL (W3).
    """
    import numpy as np

    data = np.random.default_rng(seed).random(size)
    out = data
    for _ in range(reps):
        out = np.sort(data)
    return float(out[size // 2])


def slice_sum(array: object, start: int, stop: int) -> float:
    """Sum one slice of a large array passed in by the caller (for W4)."""
    return float(array[start:stop].sum())  # type: ignore[index]


def fail_at(i: int, bad: int, seconds: float) -> int:
    """Sleep ``seconds``; task number ``bad`` raises ``ValueError`` (F1)."""
    if i == bad:
        raise ValueError(f"task {i} failed on purpose")
    time.sleep(seconds)
    return i


def die_at(i: int, bad: int, seconds: float) -> int:
    """Sleep ``seconds``; task number ``bad`` kills its process (F2)."""
    if i == bad:
        os._exit(1)
    time.sleep(seconds)
    return i


def stuck_at(i: int, bad: int, seconds: float, stuck_for: float, heartbeat: str) -> int:
    """Sleep ``seconds``; task number ``bad`` is stuck for ``stuck_for`` s (F3).

    The stuck task never looks at any cancellation flag. While it runs it
    rewrites ``heartbeat`` with a counter every 50 ms, so the caller can tell
    from outside whether the stuck work is still going after the call gave up.
    When it finishes on its own it writes ``done`` to the file.
    """
    if i != bad:
        time.sleep(seconds)
        return i
    deadline = time.monotonic() + stuck_for
    count = 0
    while time.monotonic() < deadline:
        count += 1
        with open(heartbeat, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()} {threading.get_ident()} {count}")
        time.sleep(0.05)
    with open(heartbeat, "w", encoding="ascii") as fh:
        fh.write("done")
    return i
