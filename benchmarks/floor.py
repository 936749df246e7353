"""W6's 18 forest fits on plain engines, no parlay and no joblib: what each engine allows.

Usage (from the repository root)::

    python -m benchmarks.floor --rounds 3
    python -m benchmarks.floor --engines serial,threads,processes --rounds 3

W6 is ``GridSearchCV`` over a 50-tree forest: 18 fits (6 candidates x 3 folds), then the
refit. Here the 18 fits are run by hand (``RandomForestClassifier(n_jobs=1).fit`` on each
fold's training rows) on a bare engine with one worker per core:

- ``serial``: one after the other in this process;
- ``threads``: ``concurrent.futures.ThreadPoolExecutor``;
- ``processes``: ``concurrent.futures.ProcessPoolExecutor`` (each task pickles its rows);
- ``dask``: ``distributed.LocalCluster`` (one single-threaded worker process per core, on
  127.0.0.1, distributed's defaults), ``client.submit`` per fit, the data scattered once.

Every engine starts first and runs one unmeasured round; then each round runs every
engine in turn (every other round backwards), so a slow minute of the host falls on all.
Printed per engine: the median wall time of a round and its ratio to serial's, and the
summed time of the fits as each worker measured it, over serial's (1.00 when running
side by side costs a fit nothing).

This is the floor a scheduler on top of the engine can reach for the fits, not a parlay
figure: parlay's W6 also pays the refit and GridSearchCV's own work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.scikit import W6_CV, W6_GRID, W6_SAMPLES, W6_TREES, dataset
from benchmarks.systems import all_cores

ENGINES = ("serial", "threads", "processes", "dask")

#: One fit: (parameters of the forest, training row indices).
Job = tuple[dict[str, Any], Any]


def jobs(X: Any) -> list[Job]:
    """W6's 18 fits of the rows `X`: every candidate of the grid on every fold's training rows."""
    from sklearn.model_selection import KFold, ParameterGrid  # type: ignore[import-untyped]

    folds = [train for train, _test in KFold(W6_CV).split(X)]
    return [(params, train) for params in ParameterGrid(W6_GRID) for train in folds]


def fit(X: Any, y: Any, params: dict[str, Any], train: Any) -> float:
    """Fit one forest of W6 on the rows `train`; return the seconds the fit took."""
    from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-untyped]

    start = time.perf_counter()
    model = RandomForestClassifier(n_estimators=W6_TREES, n_jobs=1, random_state=0, **params)
    model.fit(X[train], y[train])
    return time.perf_counter() - start


class Engine:
    """A started engine that runs a round of fits and returns their summed times."""

    def __init__(self, name: str, workers: int, X: Any, y: Any) -> None:
        self.name = name
        self._closers: list[Callable[[], Any]] = []
        if name == "serial":
            self.round = lambda todo: sum(fit(X, y, p, t) for p, t in todo)
        elif name in ("threads", "processes"):
            from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

            pool_cls = ThreadPoolExecutor if name == "threads" else ProcessPoolExecutor
            pool = pool_cls(workers)
            self._closers.append(pool.shutdown)
            self.round = lambda todo: sum(
                pool.map(fit, [X] * len(todo), [y] * len(todo), *zip(*todo, strict=True))
            )
        elif name == "dask":
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            client = Client(cluster)
            self._closers += [cluster.close, client.close]
            X_, y_ = client.scatter(X, broadcast=True), client.scatter(y, broadcast=True)
            self.round = lambda todo: sum(
                client.gather([client.submit(fit, X_, y_, p, t, pure=False) for p, t in todo])
            )
        else:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, serial first")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    args = p.parse_args(argv)
    args.engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = [name for name in args.engines if name not in ENGINES]
    if unknown or not args.engines or args.engines[0] != "serial":
        p.error(f"give serial first, then any of {', '.join(ENGINES[1:])}; unknown: {unknown}")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.floor``."""
    args = parse(argv)
    warnings.simplefilter("ignore")
    X, y = dataset(W6_SAMPLES)
    todo = jobs(X)
    workers = all_cores()
    engines: list[Engine] = []
    walls: dict[str, list[float]] = {}
    fitted: dict[str, list[float]] = {}
    try:
        for name in args.engines:
            engine = Engine(name, workers, X, y)
            engines.append(engine)
            engine.round(todo)  # unmeasured: imports, first pages, the pools' start
            walls[name], fitted[name] = [], []
        for round_ in range(args.rounds):
            for engine in engines if round_ % 2 == 0 else engines[::-1]:
                start = time.perf_counter()
                fitted[engine.name].append(engine.round(todo))
                walls[engine.name].append(time.perf_counter() - start)
                print(f"{engine.name:<10} {walls[engine.name][-1]:.3f} s", file=sys.stderr)
    finally:
        for engine in reversed(engines):
            engine.close()
    base_wall = statistics.median(walls["serial"])
    base_fits = statistics.median(fitted["serial"])
    print(f"W6's {len(todo)} fits, {workers} workers, {args.rounds} rounds: median wall, ratio")
    for name in walls:
        wall, fits = statistics.median(walls[name]), statistics.median(fitted[name])
        print(
            f"{name:<10} {wall:.3f} s  {wall / base_wall:.3f}x serial  "
            f"fits {fits / base_fits:.3f}x serial's"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
