"""parlay's main demo: the negotiation explained, then real runs on each backend.

Run with ``make demo`` (or ``python examples/demo.py`` in an environment with parlay).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import parlay
from parlay import Parallel, delayed, parallel_config


def python_work(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL, so it needs processes to run in parallel."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def numpy_work(seed: int) -> float:
    """A NumPy sort: releases the GIL, so threads run it in parallel."""
    values = np.random.default_rng(seed).random(2_000_000)
    return float(np.sort(values)[1_000_000])


def nested(seed: int) -> int:
    """A task that runs a parallel call of its own."""
    return sum(Parallel(n_jobs=-1)(delayed(python_work)(200_000 + i) for i in range(4)))


def slice_sum(array: np.ndarray, start: int, stop: int) -> float:
    """Sum one slice of a large array that every task receives whole."""
    return float(array[start:stop].sum())


def failing(i: int) -> int:
    if i == 7:
        raise ValueError(f"bad input {i}")
    return i


def chatty(i: int) -> int:
    """A task that prints: its output comes back to this terminal, named by worker."""
    print(f"task {i} says hello")
    return i


def grid_search() -> object:
    """scikit-learn's nested parallelism: a grid search over forests, both n_jobs=-1."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=2_000, n_features=20, random_state=0)
    search = GridSearchCV(
        RandomForestClassifier(n_estimators=50, n_jobs=-1, random_state=0),
        {"max_depth": [4, None], "min_samples_leaf": [1, 5]},
        cv=3,
        n_jobs=-1,
    )
    return search.fit(X, y)


def timed(label: str, call) -> None:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    call()
    print(f"  {label:<44} {time.perf_counter() - t0:6.2f} s")


def main() -> None:
    print(f"parlay {parlay.__version__} on {parlay.cpu_count()} cores\n")

    print("1. The negotiation, explained")
    print(Parallel(n_jobs=-1).explain(), end="\n\n")
    print(Parallel(n_jobs=-1, prefer="threads").explain(), end="\n\n")
    with parallel_config(backend="threads"):
        print(Parallel(n_jobs=-1, prefer="processes").explain(), end="\n\n")
    with parallel_config(backend="processes"):
        print(Parallel(n_jobs=-1, require="sharedmem").explain(), end="\n\n")

    print("2. Real runs (pools are started once, then reused)")
    Parallel(n_jobs=-1, backend="processes")(delayed(abs)(i) for i in range(4))  # warm up
    sizes = [1_500_000] * 16
    seeds = range(16)
    timed("GIL-bound work, sequential", lambda: [python_work(n) for n in sizes])
    timed(
        "GIL-bound work, processes (the default)",
        lambda: Parallel(n_jobs=-1)(delayed(python_work)(n) for n in sizes),
    )
    timed("NumPy work, sequential", lambda: [numpy_work(s) for s in seeds])
    timed(
        "NumPy work, threads (prefer='threads')",
        lambda: Parallel(n_jobs=-1, prefer="threads")(delayed(numpy_work)(s) for s in seeds),
    )
    timed(
        "20,000 tiny tasks, processes (auto batching)",
        lambda: Parallel(n_jobs=-1)(delayed(abs)(i) for i in range(20_000)),
    )
    timed(
        "nested calls inside tasks, processes",
        lambda: Parallel(n_jobs=-1)(delayed(nested)(s) for s in range(8)),
    )

    print("\n3. The same calls on a Dask cluster parlay starts itself (127.0.0.1)")
    with parallel_config(backend="dask"):
        print(Parallel(n_jobs=-1, prefer="threads").explain(), end="\n\n")
        timed("cluster start-up (first call)", lambda: Parallel(n_jobs=-1)([delayed(abs)(1)]))
        timed(
            "GIL-bound work, dask",
            lambda: Parallel(n_jobs=-1)(delayed(python_work)(n) for n in sizes),
        )
        array = np.random.default_rng(0).random(20_000_000)  # 160 MB, sent once per call
        timed(
            "160 MB array to 32 tasks, dask",
            lambda: Parallel(n_jobs=-1)(
                delayed(slice_sum)(array, i * 625_000, (i + 1) * 625_000) for i in range(32)
            ),
        )
        timed(
            "nested calls inside tasks, dask (secede)",
            lambda: Parallel(n_jobs=-1)(delayed(nested)(s) for s in range(8)),
        )

    print("\n4. scikit-learn on the cluster, and a picture of what ran where")
    with parallel_config(backend="dask"), parlay.timeline() as tl:
        timed("GridSearchCV(RandomForest(n_jobs=-1), n_jobs=-1)", grid_search)
        print(f"  decided for scikit-learn's last call: {parlay.explain_last()!r}")
    print(tl.summary())
    path = Path(tempfile.gettempdir()) / "parlay-demo" / "timeline.html"
    path.parent.mkdir(exist_ok=True)
    tl.save(path)
    print(f"  task-stream timeline written to {path} (open it in a browser)")

    print("\n5. A progress bar of completed tasks, on any backend, and the tasks' output")
    Parallel(n_jobs=-1, progress=True)([delayed(python_work)(300_000) for _ in range(24)])
    Parallel(n_jobs=2, backend="processes")(delayed(chatty)(i) for i in range(2))

    print("\n6. Errors you can act on")
    try:
        Parallel(n_jobs=-1)(delayed(failing)(i) for i in range(20))
    except ValueError as exc:
        print(f"  the task's own exception: ValueError({exc})")
        for note in exc.__notes__:
            print(f"  with a note: {note}")
    results = Parallel(n_jobs=-1, return_exceptions=True)(delayed(failing)(i) for i in range(10))
    print(f"  return_exceptions=True: {results}")
    try:
        Parallel(n_jobs=-1, timeout=0.5)(delayed(time.sleep)(s) for s in (0.1, 30, 0.1))
    except TimeoutError as exc:
        print(f"  timeout: {type(exc).__name__}: {exc}")
    parlay.shutdown()


if __name__ == "__main__":
    main()
