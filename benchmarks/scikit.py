"""W5 and W6: scikit-learn's ``n_jobs`` on each system, through its joblib route.

The estimators are built with ``n_jobs=adapter.sklearn_n_jobs`` (-1; 1 for
``serial``) and fitted inside ``adapter.joblib_config()``:
``joblib.parallel_config(backend=...)`` for joblib's backends,
``parlay.parallel_config(backend=...)`` for parlay's (no backend for
``parlay-default``: parlay negotiates with scikit-learn's ``prefer``). Entering
the context is part of the timed call. The datasets are made before the memory
baseline, like W4's array.

Every fit is checked: the same fitted model on every call of the cell (a
fingerprint of the forest, or of the search's results), and the fingerprint is
kept in the JSON, so that the systems can be compared with each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.context import Context, summary, time_repeated
from benchmarks.systems import Adapter

#: Synthetic data: ``make_classification(n_samples, FEATURES, INFORMATIVE, random_state=0)``.
FEATURES = 20
INFORMATIVE = 10
#: W5: serial ``RandomForestClassifier(200 trees).fit`` takes ~5 s on 2 cores here.
W5_SAMPLES = 10_000
W5_TREES = 200
#: W6: serial ``GridSearchCV`` (6 candidates x 3 folds of 50 trees, plus the
#: refit) takes ~5 s on 2 cores here.
W6_SAMPLES = 4_500
W6_TREES = 50
W6_GRID: dict[str, list[Any]] = {"max_depth": [4, 8, None], "min_samples_leaf": [1, 5]}
W6_CV = 3
#: Modules the warm-up imports in every worker.
SKLEARN_IMPORTS = ("sklearn.ensemble", "sklearn.model_selection")


def needs_joblib_route(cls: type[Adapter]) -> str | None:
    """W5/W6 skip the systems that scikit-learn's ``n_jobs`` cannot reach."""
    if cls.joblib_route:
        return None
    return "no joblib backend: scikit-learn's n_jobs cannot run on it"


def dataset(samples: int) -> tuple[Any, Any]:
    """The synthetic classification problem of W5/W6, ``samples`` rows."""
    from sklearn.datasets import make_classification  # type: ignore[import-untyped]

    return make_classification(  # type: ignore[no-any-return]
        n_samples=samples, n_features=FEATURES, n_informative=INFORMATIVE, random_state=0
    )


def forest(trees: int, n_jobs: int) -> Any:
    """``RandomForestClassifier(n_estimators=trees, n_jobs=n_jobs, random_state=0)``."""
    from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-untyped]

    return RandomForestClassifier(n_estimators=trees, n_jobs=n_jobs, random_state=0)


def forest_nodes(model: Any) -> int:
    """Total node count of a fitted forest: the same trees give the same count."""
    return sum(int(tree.tree_.node_count) for tree in model.estimators_)


def fit_calls(
    adapter: Adapter,
    ctx: Context,
    samples: int,
    make_model: Callable[[int], Any],
    fingerprint: Callable[[Any], str],
) -> dict[str, Any]:
    """Time ``make_model(n_jobs).fit(X, y)`` inside the system's joblib context."""
    X, y = dataset(samples)
    seen: list[str] = []

    def call() -> Any:
        model = make_model(adapter.sklearn_n_jobs)
        with adapter.joblib_config():
            model.fit(X, y)
        return model

    def check(model: Any) -> None:
        found = fingerprint(model)
        if seen and found != seen[0]:
            raise AssertionError(f"the fit changed between calls: {found} != {seen[0]}")
        seen.append(found)

    res = time_repeated(ctx, call, check)
    res["value"] = summary(res["times_s"], "s")
    res["fingerprint"] = seen[0] if seen else None
    decision = adapter.last_decision()
    if decision is not None:
        res["last_decision"] = decision
    return res


def run_w5(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W5: ``RandomForestClassifier(200 trees, n_jobs=-1, random_state=0).fit``."""

    def fingerprint(model: Any) -> str:
        if len(model.estimators_) != W5_TREES:
            raise AssertionError(f"W5 fitted {len(model.estimators_)} trees")
        return f"nodes={forest_nodes(model)}"

    res = fit_calls(adapter, ctx, W5_SAMPLES, lambda n: forest(W5_TREES, n), fingerprint)
    res["params"] = {
        "samples": W5_SAMPLES,
        "features": FEATURES,
        "trees": W5_TREES,
        "n_jobs": adapter.sklearn_n_jobs,
    }
    return res


def grid_search(n_jobs: int) -> Any:
    """W6's model: ``GridSearchCV`` of a 50-tree forest, both with ``n_jobs``."""
    from sklearn.model_selection import GridSearchCV  # type: ignore[import-untyped]

    return GridSearchCV(forest(W6_TREES, n_jobs), W6_GRID, cv=W6_CV, n_jobs=n_jobs)


def run_w6(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W6: ``GridSearchCV(RandomForestClassifier(50 trees, n_jobs=-1), grid, cv=3, n_jobs=-1)``."""

    def fingerprint(model: Any) -> str:
        scores = model.cv_results_["mean_test_score"]
        best = sorted(model.best_params_.items())
        return (
            f"best={best} score={model.best_score_:.6f} "
            f"scores_sum={float(scores.sum()):.6f} nodes={forest_nodes(model.best_estimator_)}"
        )

    res = fit_calls(adapter, ctx, W6_SAMPLES, grid_search, fingerprint)
    res["params"] = {
        "samples": W6_SAMPLES,
        "features": FEATURES,
        "trees": W6_TREES,
        "grid": W6_GRID,
        "cv": W6_CV,
        "n_jobs": adapter.sklearn_n_jobs,
    }
    return res
