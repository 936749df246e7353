"""W5 and W6 with several systems in one process, call by call in turn.

Usage (from the repository root)::

    python -m benchmarks.interleaved W6 serial,parlay-threads,parlay-processes --calls 4

On a shared host whose speed drifts by 10-25% within minutes, two cells run a minute
apart compare the host as much as the systems. Here every system is started first, then
each measured call of one system is followed by one of the next (every other round
backwards), so a slow minute falls on all of them. The price: the engines share the
process, so an idle engine (a Dask cluster's event loops) is running during the others'
calls; the cells of ``benchmarks.run`` stay the reference for memory and threads.
Prints each system's median, min and max, and its ratio to the first system's median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import benchmarks.clusters  # registers the cluster systems
import benchmarks.libraries  # noqa: F401  (registers joblib's and parlay's systems)
from benchmarks.scikit import (
    SKLEARN_IMPORTS,
    W5_SAMPLES,
    W5_TREES,
    W6_SAMPLES,
    dataset,
    forest,
    grid_search,
)
from benchmarks.systems import SYSTEMS, Adapter, all_cores

WORKLOADS = ("W5", "W6")


def model_maker(workload: str) -> tuple[int, Callable[[int], Any]]:
    """The dataset size and the model of a workload, given scikit-learn's ``n_jobs``."""
    if workload == "W5":
        return W5_SAMPLES, lambda n_jobs: forest(W5_TREES, n_jobs)
    return W6_SAMPLES, grid_search


def fit_once(adapter: Adapter, make: Callable[[int], Any], X: Any, y: Any) -> float:
    """Seconds of one fit in the system's joblib context."""
    model = make(adapter.sklearn_n_jobs)
    with adapter.joblib_config():
        start = time.perf_counter()
        model.fit(X, y)
        return time.perf_counter() - start


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.interleaved",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("systems", help="comma-separated systems; ratios are to the first")
    p.add_argument("--calls", type=int, default=4, help="measured calls per system (default 4)")
    args = p.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown or len(args.systems) < 2:
        p.error(f"give two systems or more among {', '.join(SYSTEMS)}; unknown: {unknown}")
    if {"parlay-ray", "joblib-ray"} <= set(args.systems):
        p.error("parlay-ray and joblib-ray cannot share a process (one ray.init each)")
    if args.calls < 1:
        p.error(f"--calls must be at least 1, got {args.calls}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.interleaved``."""
    args = parse(argv)
    warnings.simplefilter("ignore")  # scikit-learn's own, once per fit
    samples, make = model_maker(args.workload)
    X, y = dataset(samples)
    adapters = [SYSTEMS[name](all_cores()) for name in args.systems]
    for adapter in adapters:
        reason = adapter.unavailable_reason()
        if reason is not None or not adapter.joblib_route:
            raise SystemExit(f"{adapter.name} cannot run {args.workload}: {reason or 'no joblib'}")
    times: dict[str, list[float]] = {adapter.name: [] for adapter in adapters}
    try:
        for adapter in adapters:
            adapter.start(SKLEARN_IMPORTS)
            fit_once(adapter, make, X, y)  # unmeasured: first fits pay the workers' imports
        for round_ in range(args.calls):
            for adapter in adapters if round_ % 2 == 0 else adapters[::-1]:
                times[adapter.name].append(fit_once(adapter, make, X, y))
                print(f"{adapter.name:<20} {times[adapter.name][-1]:.3f} s", file=sys.stderr)
    finally:
        for adapter in reversed(adapters):
            adapter.close()
    first = statistics.median(times[adapters[0].name])
    print(f"{args.workload}, {args.calls} calls each, interleaved: median (min-max), ratio")
    for name, values in times.items():
        middle = statistics.median(values)
        print(
            f"{name:<20} {middle:.3f} s ({min(values):.3f}-{max(values):.3f})  "
            f"{middle / first:.3f}x {adapters[0].name}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
