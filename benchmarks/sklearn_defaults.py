"""Where scikit-learn estimators left at ``n_jobs=None`` run: parlay against joblib.

Usage (from the repository root)::

    python -m benchmarks.sklearn_defaults
    python -m benchmarks.sklearn_defaults --systems parlay-processes,joblib-loky

Most scikit-learn estimators default to ``n_jobs=None`` and leave the resources to the
user's side. For each system the user names the engine the way its library documents,
and the estimator keeps its default:

* ``parlay-processes`` / ``joblib-loky``: the engine and ``n_jobs=-1`` in
  ``parlay.parallel_config`` / ``joblib.parallel_config``;
* ``parlay-dask``, ``parlay-ray``, ``joblib-dask``, ``joblib-ray``: the engine alone
  (a cluster is the user's resource).

Every fit, predict and score inside the estimator's parallel work notes its process
id; the table gives, per estimator, how many processes did the work (``1*``: the
caller alone, none of the engine's workers). Each system runs in a process of its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.systems import parse_names, run_child

SYSTEMS = (
    "parlay-processes",
    "joblib-loky",
    "parlay-dask",
    "joblib-dask",
    "parlay-ray",
    "joblib-ray",
)
SAMPLES = 400


def _note(folder: str) -> None:
    with open(os.path.join(folder, f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass


def _noted_score(folder: str, estimator: Any, X: Any, y: Any) -> float:
    _note(folder)
    return float(estimator.score(X, y))


def estimators(folder: str) -> dict[str, Callable[[], Any]]:
    """Each estimator at its defaults, noting where its work runs in `folder`."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import BaggingClassifier, StackingClassifier, VotingClassifier
    from sklearn.feature_selection import RFECV
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_validate
    from sklearn.multioutput import MultiOutputClassifier

    class Noted(LogisticRegression):  # type: ignore[misc]
        def __init__(self, folder: str = "", C: float = 1.0) -> None:
            super().__init__(C=C, max_iter=200)
            self.folder = folder

        def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
            _note(self.folder)
            return super().fit(X, y, sample_weight=sample_weight)

    X, y = make_classification(n_samples=SAMPLES, n_features=10, random_state=0)
    pair = [("a", Noted(folder)), ("b", Noted(folder, C=0.3))]
    scorer = functools.partial(_noted_score, folder)
    return {
        "VotingClassifier": lambda: VotingClassifier(pair).fit(X, y),
        "StackingClassifier": lambda: StackingClassifier(pair, cv=3).fit(X, y),
        "BaggingClassifier": lambda: BaggingClassifier(Noted(folder), n_estimators=4).fit(X, y),
        "cross_validate": lambda: cross_validate(Noted(folder), X, y, cv=4),
        "permutation_importance": lambda: permutation_importance(
            LogisticRegression().fit(X, y), X, y, n_repeats=2, scoring=scorer
        ),
        "RFECV": lambda: RFECV(Noted(folder), cv=3).fit(X, y),
        "MultiOutputClassifier": lambda: MultiOutputClassifier(Noted(folder)).fit(
            X, [[a, 1 - a] for a in y]
        ),
    }


def config(system: str) -> Any:
    """The user's side of `system`, as its library documents it."""
    import joblib

    import parlay

    library, engine = system.split("-")
    if library == "parlay":
        extra = {"n_jobs": -1} if engine == "processes" else {}
        return parlay.parallel_config(backend=engine, **extra)
    extra = {"n_jobs": -1} if engine == "loky" else {}
    return joblib.parallel_config(backend=engine, **extra)


def run_system(system: str) -> dict[str, Any]:
    """In this process: start the engine, fit each estimator, count its processes."""
    import cloudpickle

    import benchmarks.clusters
    import benchmarks.libraries  # noqa: F401  (registers the systems)
    from benchmarks.systems import SYSTEMS as ADAPTERS
    from benchmarks.systems import all_cores

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    adapter = ADAPTERS[system](all_cores())
    adapter.start(("sklearn.linear_model",))
    out: dict[str, Any] = {"system": system, "rows": {}}
    try:
        for name in list(estimators("")):
            with tempfile.TemporaryDirectory(prefix="parlay-bench-") as folder:
                with config(system):
                    estimators(folder)[name]()
                pids = {int(entry.split("-")[0]) for entry in os.listdir(folder)}
            out["rows"][name] = {"workers": len(pids), "caller": pids == {os.getpid()}}
    finally:
        adapter.close()
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sklearn_defaults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.systems = parse_names(p, args.systems, SYSTEMS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(run_system(args.child)))
        return 0
    results = {}
    for system in args.systems:
        try:
            results[system] = run_child("benchmarks.sklearn_defaults", system, 900)["rows"]
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            continue
        print(f"{system}: done", file=sys.stderr)
    names = list(next(iter(results.values()))) if results else []
    print(f"Processes that did each estimator's work, estimator at n_jobs=None; {os.cpu_count()}")
    print("cores (1*: the caller alone)\n")
    print("| estimator | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for name in names:
        cells = []
        for rows in results.values():
            row = rows[name]
            cells.append(f"{row['workers']}{'*' if row['caller'] else ''}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
