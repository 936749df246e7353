"""The joblib and parlay systems on their own pools (threads, processes, sequential).

Importing this module registers them in :data:`benchmarks.systems.SYSTEMS`,
after ``serial`` and the concurrent.futures systems; :mod:`benchmarks.clusters`
builds the Dask and Ray systems on the same two base classes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, ClassVar

from benchmarks.systems import Adapter, ArgList, Task, register


class _Joblib(Adapter):
    """``joblib.Parallel(n_jobs=-1, backend=...)``; a new Parallel per call.

    With ``via_config`` the backend is chosen the way joblib documents for its
    external backends (dask, ray): ``with joblib.parallel_config(backend=...)``
    around a plain ``joblib.Parallel(n_jobs=-1)``.
    """

    backend: ClassVar[str] = ""
    via_config: ClassVar[bool] = False
    import_stmt = "import joblib"
    version_module = "joblib"
    joblib_route = True

    def run(
        self, fn: Task, args: ArgList, *, timeout: float | None = None, chunksize: int = 1
    ) -> list[Any]:
        from joblib import Parallel, delayed, parallel_config

        if not self.via_config:
            call = Parallel(n_jobs=-1, backend=self.backend, timeout=timeout)
            return list(call(delayed(fn)(*a) for a in args))
        with parallel_config(backend=self.backend):
            call = Parallel(n_jobs=-1, timeout=timeout)
            return list(call(delayed(fn)(*a) for a in args))

    def joblib_config(self) -> AbstractContextManager[Any]:
        """``joblib.parallel_config(backend=...)``: it beats scikit-learn's ``prefer``."""
        from joblib import parallel_config

        config: AbstractContextManager[Any] = parallel_config(backend=self.backend)
        return config


@register
class JoblibThreading(_Joblib):
    """joblib's threading backend."""

    name = "joblib-threading"
    backend = "threading"


@register
class JoblibLoky(_Joblib):
    """joblib's default loky backend (a reusable process executor)."""

    name = "joblib-loky"
    backend = "loky"
    isolated = True

    def close(self) -> None:
        # The executor joblib reuses lives in loky's module global; asking
        # get_reusable_executor() for it could start a fresh one instead.
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)


@register
class JoblibMultiprocessing(_Joblib):
    """joblib's multiprocessing backend (not in the default set: run it by name).

    Kept because it shows a known hang: F2 never returns on it.
    """

    name = "joblib-multiprocessing"
    backend = "multiprocessing"
    isolated = True
    group = "optional"


class _Parlay(Adapter):
    """``parlay.Parallel(n_jobs=-1, backend=...)``; parlay keeps its pools.

    scikit-learn runs in ``parlay.parallel_config(backend=...)`` (no backend:
    ``parlay.parallel_config()``, where parlay negotiates).
    """

    backend: ClassVar[str | None] = None
    import_stmt = "import parlay"
    version_module = "parlay"
    joblib_route = True

    def __init__(self, n_jobs: int) -> None:
        super().__init__(n_jobs)
        #: Extra keyword arguments of every ``Parallel`` (W1i sets ``progress``).
        self.call_options: dict[str, Any] = {}

    def run(
        self, fn: Task, args: ArgList, *, timeout: float | None = None, chunksize: int = 1
    ) -> list[Any]:
        from parlay import Parallel, delayed

        options: dict[str, Any] = dict(self.call_options)
        if timeout is not None:
            options["timeout"] = timeout
        call = Parallel(n_jobs=-1, backend=self.backend, **options)
        return list(call(delayed(fn)(*a) for a in args))

    def joblib_config(self) -> AbstractContextManager[Any]:
        import parlay

        if self.backend is None:
            return parlay.parallel_config()
        return parlay.parallel_config(backend=self.backend)

    def last_decision(self) -> dict[str, Any] | None:
        """``parlay.explain_last()``: backend, workers and rule of the latest call."""
        import parlay

        decision = parlay.explain_last()
        if decision is None:
            return None
        return {"backend": decision.backend, "n_jobs": decision.n_jobs, "rule": decision.rule}

    def close(self) -> None:
        import parlay

        parlay.shutdown()


@register
class ParlayDefault(_Parlay):
    """parlay with no backend named: parlay negotiates (its default, or the caller's ``prefer``).

    ``isolated`` is False: where tasks run depends on the negotiation, so F2
    (``os._exit`` in a task) is not run on it.
    """

    name = "parlay-default"


@register
class ParlaySequential(_Parlay):
    """parlay's sequential backend (runs in the calling thread)."""

    name = "parlay-sequential"
    backend = "sequential"
    parallel = False


@register
class ParlayThreads(_Parlay):
    """parlay's thread backend."""

    name = "parlay-threads"
    backend = "threads"


@register
class ParlayProcesses(_Parlay):
    """parlay's process backend."""

    name = "parlay-processes"
    backend = "processes"
    isolated = True
