"""scikit-learn's n_jobs on parlay, through the joblib bridge, with real scikit-learn."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest

import parlay

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    BaggingClassifier,
    RandomForestClassifier,
    StackingClassifier,
    VotingClassifier,
)
from sklearn.inspection import permutation_importance  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_validate  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.utils.parallel import Parallel as SkParallel  # noqa: E402
from sklearn.utils.parallel import delayed as sk_delayed  # noqa: E402

X, y = make_classification(n_samples=300, n_features=8, random_state=0)


@pytest.fixture(autouse=True)
def no_joblib_pool() -> Iterator[None]:
    """Work routed through parlay must never start joblib's own process pool."""
    from joblib.externals.loky import reusable_executor

    before = reusable_executor._executor  # another test may have left joblib's (closed) pool
    yield
    assert reusable_executor._executor is before, "joblib started its own loky pool"


def forest(**kwargs: object) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=12, max_depth=4, random_state=0, **kwargs)


def test_random_forest_fit_predict_same_as_sequential(backend: str) -> None:
    expected = forest(n_jobs=1).fit(X, y).predict_proba(X)
    with parlay.parallel_config(backend=backend):
        model = forest(n_jobs=-1).fit(X, y)
        fit_decision = parlay.explain_last()
        proba = model.predict_proba(X)
        predict_decision = parlay.explain_last()
    np.testing.assert_allclose(proba, expected)
    assert fit_decision is not None
    assert predict_decision is not None
    # fit says prefer="threads": the user's context wins. predict writes into one shared
    # array (require="sharedmem"): it gets shared memory whatever the context.
    assert fit_decision.backend in (backend, "sequential")
    assert predict_decision.backend in ("threads", "sequential")


def test_grid_search_same_as_sequential(backend: str) -> None:
    grid = {"max_depth": [2, 4], "n_estimators": [5, 10]}
    expected = GridSearchCV(forest(n_jobs=1), grid, cv=3, n_jobs=1).fit(X, y)
    with parlay.parallel_config(backend=backend):
        search = GridSearchCV(forest(n_jobs=-1), grid, cv=3, n_jobs=-1).fit(X, y)
    assert search.best_params_ == expected.best_params_
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"]
    )


def test_cross_validate_and_kneighbors(backend: str) -> None:
    expected = cross_validate(KNeighborsClassifier(n_jobs=1), X, y, cv=4)["test_score"]
    with parlay.parallel_config(backend=backend):
        scores = cross_validate(KNeighborsClassifier(n_jobs=-1), X, y, cv=4, n_jobs=-1)
        knn = KNeighborsClassifier(n_jobs=-1).fit(X, y).predict(X)
    np.testing.assert_allclose(scores["test_score"], expected)
    np.testing.assert_array_equal(knn, KNeighborsClassifier().fit(X, y).predict(X))


def test_permutation_importance_on_large_data(backend: str) -> None:
    # Over 1 MiB: process and cluster workers get the data through shared memory or the
    # engine's store, never as joblib's read-only memmap that breaks in-place code.
    big_X, big_y = make_classification(n_samples=20_000, n_features=8, random_state=1)
    model = forest(n_jobs=1).fit(big_X, big_y)
    expected = permutation_importance(model, big_X, big_y, n_repeats=3, random_state=0)
    with parlay.parallel_config(backend=backend):
        result = permutation_importance(model, big_X, big_y, n_repeats=3, random_state=0, n_jobs=-1)
    np.testing.assert_allclose(result.importances, expected.importances)


def where(_: int) -> tuple[int, bool, bool]:
    in_dask = False
    if "distributed" in sys.modules:
        from distributed import get_worker

        try:
            get_worker()
            in_dask = True
        except ValueError:
            pass
    in_ray = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    in_ray = in_ray and sys.modules["ray"].get_runtime_context().worker.mode == 1
    return os.getpid(), in_dask, in_ray


@pytest.mark.parametrize("engine", ["processes", "dask", "ray"])
def test_the_work_runs_on_the_chosen_engine(engine: str, request: pytest.FixtureRequest) -> None:
    if engine != "processes":
        request.getfixturevalue("dask_cluster" if engine == "dask" else "ray_runtime")
    with parlay.parallel_config(backend=engine):
        out = SkParallel(n_jobs=2)(sk_delayed(where)(i) for i in range(6))
    pids = {pid for pid, _, _ in out}
    assert os.getpid() not in pids, "the tasks ran in the caller, not on the engine"
    if engine == "dask":
        assert all(in_dask for _, in_dask, _ in out)
    if engine == "ray":
        assert all(in_ray for _, _, in_ray in out)


def read_config(_: int) -> bool:
    return bool(sklearn.get_config()["assume_finite"])


def test_scikit_learns_config_reaches_the_workers(backend: str) -> None:
    with parlay.parallel_config(backend=backend), sklearn.config_context(assume_finite=True):
        out = SkParallel(n_jobs=2)(sk_delayed(read_config)(i) for i in range(4))
    assert out == [True] * 4


def test_joblib_return_as_generator_and_timeout() -> None:
    with parlay.parallel_config(backend="threads"):
        gen = joblib.Parallel(n_jobs=2, return_as="generator")(
            joblib.delayed(abs)(-i) for i in range(5)
        )
        assert list(gen) == [0, 1, 2, 3, 4]
        gen = joblib.Parallel(n_jobs=2, return_as="generator_unordered")(
            joblib.delayed(abs)(-i) for i in range(5)
        )
        assert sorted(gen) == [0, 1, 2, 3, 4]
        # joblib enforces its own timeout and raises its own error class.
        with pytest.raises(multiprocessing.TimeoutError):
            joblib.Parallel(n_jobs=2, timeout=0.2)(
                joblib.delayed(__import__("time").sleep)(s) for s in (0.01, 1.0)
            )


def test_a_managed_call_inside_a_task_leaves_the_outer_pool_alone() -> None:
    def inner(i: int) -> int:
        with joblib.Parallel(n_jobs=2) as p:
            return sum(p(joblib.delayed(abs)(-j) for j in range(i)))

    with parlay.parallel_config(backend="threads"), joblib.Parallel(n_jobs=2) as outer:
        assert outer(joblib.delayed(inner)(i) for i in range(5)) == [0, 0, 1, 3, 6]
        assert outer(joblib.delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_a_one_worker_joblib_call_leaves_nothing_behind() -> None:
    # joblib runs a one-worker call itself and never terminates its backend: the bridge
    # must not keep that call's state (it answered effective_n_jobs() with 1 for every
    # later call of the block) nor report a call that never finishes.
    with parlay.timeline() as tl, parlay.parallel_config(backend="threads", n_jobs=2):
        assert joblib.Parallel(n_jobs=1)(joblib.delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
        assert joblib.effective_n_jobs(-1) == 2
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
        with joblib.Parallel(n_jobs=1) as managed:
            assert managed(joblib.delayed(abs)(-i) for i in range(2)) == [0, 1]
        assert joblib.effective_n_jobs(-1) == 2
    assert all(call.end is not None for call in tl.calls), tl.calls


def test_each_joblib_decision_is_logged_with_its_call_site(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="parlay.joblib"),
        parlay.parallel_config(backend="threads"),
    ):
        forest(n_jobs=-1).fit(X, y)
    messages = [r.getMessage() for r in caplog.records if r.name == "parlay.joblib"]
    assert any("sklearn.ensemble" in m and "backend='threads'" in m for m in messages), messages


def test_import_parlay_still_does_not_import_joblib() -> None:
    import subprocess

    code = "import sys, parlay; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- estimators at their defaults (n_jobs=None) ------------------------------------------


class SlowLogistic(LogisticRegression):
    """A real estimator whose fit and predict take long enough to need a worker each."""

    def fit(self, X, y, sample_weight=None):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return super().fit(X, y, sample_weight=sample_weight)

    def predict(self, X):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return super().predict(X)


class Workers(parlay.Instrument):
    """Where the batches of the joblib calls ran, and how many workers each call had."""

    def __init__(self) -> None:
        self.places: set[tuple[str, int]] = set()
        self.sizes: list[int] = []

    def call_started(self, call: parlay.CallInfo) -> None:
        if call.via == "joblib":
            self.sizes.append(call.n_workers)

    def batch_finished(self, call: parlay.CallInfo, batch: parlay.BatchReport) -> None:
        if call.via == "joblib":
            self.places.add((batch.host, batch.pid))


def _defaults() -> dict[str, Callable[[], Any]]:
    pair = [("a", SlowLogistic()), ("b", SlowLogistic(C=0.3))]
    return {
        "VotingClassifier": lambda: (
            VotingClassifier(pair, voting="soft").fit(X, y).predict_proba(X)
        ),
        "StackingClassifier": lambda: StackingClassifier(pair, cv=3).fit(X, y).predict_proba(X),
        "BaggingClassifier": lambda: (
            BaggingClassifier(SlowLogistic(), n_estimators=4, random_state=0)
            .fit(X, y)
            .predict_proba(X)
        ),
        "cross_validate": lambda: cross_validate(SlowLogistic(), X, y, cv=4)["test_score"],
        "permutation_importance": lambda: (
            permutation_importance(
                LogisticRegression().fit(X, y),
                X,
                y,
                n_repeats=2,
                random_state=0,
                scoring=_slow_score,
            ).importances
        ),
    }


def _slow_score(estimator: Any, X: Any, y: Any) -> float:
    time.sleep(0.02)
    return float(estimator.score(X, y))


def warm(n: int) -> None:
    """Have every worker of the call up before the measured work (a fresh pool's first
    worker to start could otherwise take two short tasks in a row)."""
    parlay.Parallel(n_jobs=n)(parlay.delayed(time.sleep)(0.2) for _ in range(n))


@pytest.mark.parametrize("name", list(_defaults()))
@pytest.mark.parametrize("engine", ["processes", "dask", "ray"])
def test_estimators_at_their_defaults_use_the_users_workers(
    engine: str, name: str, request: pytest.FixtureRequest
) -> None:
    # The user's side says the resources; the estimator's n_jobs stays None. On
    # processes the user names 2 workers; a cluster named with no n_jobs is used whole.
    run = _defaults()[name]
    expected = run()
    config: dict[str, Any] = {"backend": engine}
    if engine == "processes":
        config["n_jobs"] = 2
    else:
        request.getfixturevalue("dask_cluster" if engine == "dask" else "ray_runtime")
    workers = Workers()
    with parlay.parallel_config(**config):
        warm(2)
        with parlay.parallel_config(instruments=[workers]):
            got = run()
        decision = parlay.explain_last()
    np.testing.assert_allclose(got, expected)
    assert workers.sizes
    assert max(workers.sizes) >= 2, workers.sizes
    assert len(workers.places) >= 2, f"the work ran on one worker: {workers.places}"
    assert os.getpid() not in {pid for _, pid in workers.places}
    assert decision is not None
    if name != "BaggingClassifier":  # it asks joblib.effective_n_jobs(None) and passes that
        why = "parallel_config" if engine == "processes" else "the whole cluster"
        assert why in str(decision), decision


def test_an_explicit_n_jobs_1_stays_1() -> None:
    with parlay.parallel_config(backend="processes", n_jobs=2):
        VotingClassifier([("a", LogisticRegression())], n_jobs=1).fit(X, y)
        decision = parlay.explain_last()
        assert joblib.effective_n_jobs(None) == 2
        assert joblib.effective_n_jobs(1) == 1
    assert decision is not None
    assert decision.n_jobs == 1, decision


def test_parlay_n_jobs_from_the_environment_reaches_n_jobs_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARLAY_N_JOBS", "2")
    with parlay.parallel_config(backend="threads"):
        out = SkParallel()(sk_delayed(threading.get_ident)() for _ in range(4))
        decision = parlay.explain_last()
    assert decision is not None
    assert decision.n_jobs == 2
    assert "PARLAY_N_JOBS" in str(decision), decision
    assert threading.get_ident() not in out


def test_joblibs_own_n_jobs_setting_still_wins_inside_parlays() -> None:
    with parlay.parallel_config(backend="threads", n_jobs=2), joblib.parallel_config(n_jobs=1):
        SkParallel()(sk_delayed(abs)(-i) for i in range(3))
        decision = parlay.explain_last()
    assert decision is not None
    assert decision.n_jobs == 1


def hang_noting_pid(folder: str) -> None:
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(60)


@pytest.mark.timeout(60)
def test_a_joblib_timeout_kills_the_stuck_workers(tmp_path: Any) -> None:
    # joblib's loky backend kills its workers when a call times out; through the bridge
    # the stuck tasks held parlay's pool, and the next call waited for them.
    with parlay.parallel_config(backend="processes"), pytest.raises(multiprocessing.TimeoutError):
        joblib.Parallel(n_jobs=2, timeout=1)(
            joblib.delayed(hang_noting_pid)(str(tmp_path)) for _ in range(2)
        )
    pids = [int(name) for name in os.listdir(tmp_path)]
    assert pids
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(pid) for pid in pids), "a stuck worker is still running"
    assert parlay.Parallel(n_jobs=2)(parlay.delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def die(_: int) -> None:
    os._exit(3)


def test_the_bridge_raises_joblibs_error_types_too() -> None:
    # Code written for joblib catches loky's TerminatedWorkerError and pickle's
    # PicklingError; parlay's own classes are kept as well.
    import pickle

    from joblib.externals.loky.process_executor import TerminatedWorkerError

    with parlay.parallel_config(backend="processes", n_jobs=2):
        with pytest.raises(TerminatedWorkerError) as died:
            joblib.Parallel()(joblib.delayed(die)(i) for i in range(2))
        with pytest.raises(pickle.PicklingError) as unpicklable:
            joblib.Parallel()(joblib.delayed(abs)(threading.Lock()) for _ in range(2))
    assert isinstance(died.value, parlay.WorkerDiedError)
    assert isinstance(unpicklable.value, parlay.SerializationError)
