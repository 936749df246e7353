"""A forest fit with n_jobs 2, 3, 8, 16, 32 and 2 in turn: process pools of many sizes.

Usage (from the repository root)::

    python -m benchmarks.pool_sizes --rounds 3

scikit-learn users change ``n_jobs`` from one estimator to the next. Each system runs
the same sequence of fits (a 10-tree RandomForestClassifier, ``n_jobs`` as given) in a
fresh Python process of its own, with the estimator's ``n_jobs`` set and the engine
named by the user's side:

* ``parlay``: ``parlay.parallel_config(backend="processes")``;
* ``joblib-loky``: ``joblib.parallel_config(backend="loky")``.

After each fit it counts the worker processes alive (children of the process, the
engines' resource trackers left out) and which of the fit's workers were already alive
before it (warm). Runs alternate between the systems, every other round backwards.
Prints, per system, the median time of the whole sequence and of each fit, the workers
alive after each fit and their peak, and the ratio of the sequence's time to the first
system's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from benchmarks.systems import parse_names, run_child

SYSTEMS = ("parlay", "joblib-loky")
SIZES = (2, 3, 8, 16, 32, 2)
TREES = 10
SAMPLES = 2000


def live_workers() -> set[int]:
    """Pids of this process's children, the engines' resource trackers left out."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        found.add(child.pid)
    return found


def _fit_pid(_: Any) -> int:
    return os.getpid()


def run_sequence(system: str) -> dict[str, Any]:
    """In this process: fit the forests with every size in turn; what it cost."""
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    import parlay

    X, y = make_classification(n_samples=SAMPLES, n_features=20, random_state=0)
    config: Any = (
        parlay.parallel_config(backend="processes")
        if system == "parlay"
        else joblib.parallel_config(backend="loky")
    )
    fits, alive, warm = [], [], []
    start = time.perf_counter()
    with config:
        for n_jobs in SIZES:
            before = live_workers()
            model = RandomForestClassifier(n_estimators=TREES, n_jobs=n_jobs, random_state=0)
            t0 = time.perf_counter()
            model.fit(X, y)
            fits.append(time.perf_counter() - t0)
            # Where the fit's workers are: one short call of the same size asks them.
            pids = set(
                joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_fit_pid)(i) for i in range(n_jobs))
            )
            alive.append(len(live_workers()))
            warm.append(len(pids & before))
    total = time.perf_counter() - start
    parlay.shutdown()
    return {"system": system, "total": total, "fits": fits, "alive": alive, "warm": warm}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pool_sizes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="runs per system (default 3)")
    p.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated; ratios to the first"
    )
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.systems = parse_names(p, args.systems, SYSTEMS)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(run_sequence(args.child)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.systems}
    for round_ in range(args.rounds):
        order = args.systems if round_ % 2 == 0 else args.systems[::-1]
        for name in order:
            record = run_child("benchmarks.pool_sizes", name, timeout=600)
            runs[name].append(record)
            print(f"round {round_ + 1}: {name} {record['total']:.2f} s", file=sys.stderr)
    first = statistics.median(r["total"] for r in runs[args.systems[0]])
    sizes = " ".join(str(n) for n in SIZES)
    print(f"RandomForestClassifier({TREES} trees, {SAMPLES} rows) with n_jobs {sizes} in turn")
    print(f"{args.rounds} runs each, medians; {os.cpu_count()} cores\n")
    print(
        "| system | sequence (s) | ratio | each fit (s) | workers alive after each | warm | peak |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, records in runs.items():
        total = statistics.median(r["total"] for r in records)
        fits = [statistics.median(r["fits"][i] for r in records) for i in range(len(SIZES))]
        alive = [max(r["alive"][i] for r in records) for i in range(len(SIZES))]
        warm = [min(r["warm"][i] for r in records) for i in range(len(SIZES))]
        print(
            f"| {name} | {total:.2f} | {total / first:.2f} | "
            f"{' '.join(f'{f:.2f}' for f in fits)} | {' '.join(map(str, alive))} | "
            f"{' '.join(map(str, warm))} | {max(alive)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
