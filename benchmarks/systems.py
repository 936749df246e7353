"""The systems under test: one small adapter each, kept in a registry.

An adapter knows how to start its engine (pool creation plus a warm-up call),
run one parallel call of ``fn(*args)`` over a list of argument tuples, and
close its engine. To add a system, write a subclass and decorate it with
:func:`register`; nothing else changes. This module has ``serial`` and the
concurrent.futures systems; joblib's and parlay's are in
:mod:`benchmarks.libraries`, the cluster systems (Dask, Ray) in
:mod:`benchmarks.clusters`: each registers its systems when imported.

Every adapter imports its library lazily, inside its methods, so that the
registry can be imported (and listed) without any of them installed.

Systems with a joblib route (joblib's backends, parlay's bridge, serial) also
run scikit-learn's ``n_jobs`` (W5, W6): :meth:`Adapter.joblib_config` is the
context the fit runs in, :attr:`Adapter.sklearn_n_jobs` the estimators' ``n_jobs``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from benchmarks import workloads

Task = Callable[..., Any]
ArgList = Sequence[tuple[Any, ...]]

#: Seconds each warm-up task sleeps; long enough for a pool to hand the
#: warm-up tasks to all of its workers, short enough to be cheap.
WARM_TASK_SECONDS = 0.01
#: Warm-up calls stop once every worker answered, or after this many seconds.
WARM_LIMIT_S = 2.0


class Adapter:
    """Base class of a system under test."""

    #: Registry key and column name.
    name: ClassVar[str] = ""
    #: True if tasks run in other processes (so a task may kill its worker).
    isolated: ClassVar[bool] = False
    #: False for systems that run tasks one at a time in the caller.
    parallel: ClassVar[bool] = True
    #: True if a call accepts a ``timeout``.
    supports_timeout: ClassVar[bool] = True
    #: Statement whose import time the ``import`` workload measures.
    import_stmt: ClassVar[str] = "pass"
    #: Group the system belongs to: ``--systems`` accepts group names, and the
    #: default run is the ``default`` group (see :data:`GROUP_NAMES`).
    group: ClassVar[str] = "default"
    #: Modules imported before start-up is timed (besides ``version_module``);
    #: the system is unavailable if one of them does not import.
    preload_modules: ClassVar[tuple[str, ...]] = ()
    #: Module whose version is recorded in the cell's JSON, if any.
    version_module: ClassVar[str | None] = None
    #: True if joblib calls (scikit-learn's ``n_jobs``) can run on the system.
    joblib_route: ClassVar[bool] = False
    #: ``n_jobs`` given to scikit-learn estimators (W5, W6).
    sklearn_n_jobs: ClassVar[int] = -1

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.warm_workers = 0
        self.warm_calls = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the system cannot run here, or None if it can."""
        for name in cls._modules():
            try:
                importlib.import_module(name)
            except Exception as exc:  # any import failure disqualifies
                return f"{type(exc).__name__}: {exc}"
        return None

    @classmethod
    def _modules(cls) -> tuple[str, ...]:
        version = () if cls.version_module is None else (cls.version_module,)
        return version + cls.preload_modules

    @classmethod
    def preload(cls) -> None:
        """Import the system's library, so start-up timing leaves the import out."""
        for name in cls._modules():
            importlib.import_module(name)

    @classmethod
    def version(cls) -> str | None:
        """Version string of the library behind the system."""
        if cls.version_module is None:
            return None
        module = __import__(cls.version_module)
        return str(getattr(module, "__version__", "unknown"))

    def start(self, imports: tuple[str, ...] = ()) -> None:
        """Create the engine and warm up its workers.

        Warm-up calls of ``2 * n_jobs`` short tasks are repeated until every
        worker has answered one (or :data:`WARM_LIMIT_S` has passed); each
        warm-up task imports ``imports`` first, so the measured calls do not
        pay for the workload's imports either.
        """
        expected = self.n_jobs if self.parallel else 1
        pause = WARM_TASK_SECONDS if self.parallel else 0.0
        seen: set[Any] = set()
        deadline = time.monotonic() + WARM_LIMIT_S
        while True:
            self.warm_calls += 1
            seen.update(self.run(workloads.warm, [(pause, imports)] * (2 * expected)))
            if len(seen) >= expected or time.monotonic() > deadline:
                break
        self.warm_workers = len(seen)

    def run(
        self,
        fn: Task,
        args: ArgList,
        *,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> list[Any]:
        """Run ``fn(*a)`` for each ``a`` in ``args`` and return the results.

        ``chunksize`` is a hint that only systems with a map-style chunk
        parameter use; ``timeout`` is passed on where the system has one.
        """
        raise NotImplementedError

    def joblib_config(self) -> AbstractContextManager[Any]:
        """The context in which joblib's calls (scikit-learn's) run on this system."""
        raise NotImplementedError(f"{self.name} has no joblib route")

    def last_decision(self) -> dict[str, Any] | None:
        """Where the system ran the latest joblib call of this thread, if it says."""
        return None

    def close(self) -> None:
        """Shut the engine down (workers may still be killed afterwards)."""


SYSTEMS: dict[str, type[Adapter]] = {}
#: Groups of systems, by the ``group`` of their adapters: ``default`` (run
#: when ``--systems`` is not given), ``clusters`` (Dask and Ray: seconds of
#: start-up each) and ``optional`` (kept for a known behaviour, run by name).
GROUP_NAMES = ("default", "clusters", "optional")


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to :data:`SYSTEMS` under its name."""
    if not cls.name or cls.name in SYSTEMS:
        raise ValueError(f"bad or duplicate system name {cls.name!r}")
    SYSTEMS[cls.name] = cls
    return cls


@register
class Serial(Adapter):
    """A plain list comprehension in the calling thread; no engine."""

    name = "serial"
    parallel = False
    supports_timeout = False
    joblib_route = True
    sklearn_n_jobs = 1

    def start(self, imports: tuple[str, ...] = ()) -> None:
        """No engine: only the workload's imports."""
        workloads.warm(0.0, imports)
        self.warm_workers = 1

    def run(
        self, fn: Task, args: ArgList, *, timeout: float | None = None, chunksize: int = 1
    ) -> list[Any]:
        return [fn(*a) for a in args]

    def joblib_config(self) -> AbstractContextManager[Any]:
        """Nothing: the estimators get ``n_jobs=1``."""
        return contextlib.nullcontext()


class _Futures(Adapter):
    """concurrent.futures executors, driven through ``Executor.map``."""

    import_stmt = "import concurrent.futures"
    preload_modules = ("concurrent.futures",)

    def __init__(self, n_jobs: int) -> None:
        super().__init__(n_jobs)
        self.executor: Any = None

    def _make(self) -> Any:
        raise NotImplementedError

    def start(self, imports: tuple[str, ...] = ()) -> None:
        self.executor = self._make()
        super().start(imports)

    def run(
        self, fn: Task, args: ArgList, *, timeout: float | None = None, chunksize: int = 1
    ) -> list[Any]:
        columns = list(zip(*args, strict=True)) if args else [()]
        return list(self.executor.map(fn, *columns, timeout=timeout, chunksize=chunksize))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


@register
class FuturesThreads(_Futures):
    """``concurrent.futures.ThreadPoolExecutor(max_workers=n_jobs)``."""

    name = "cf-threads"

    def _make(self) -> Any:
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=self.n_jobs)


@register
class FuturesProcesses(_Futures):
    """``concurrent.futures.ProcessPoolExecutor`` with the platform default start method."""

    name = "cf-processes"
    isolated = True

    def _make(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.n_jobs)


def group_members(group: str) -> list[str]:
    """Names of the registered systems in ``group`` (``all``: every system)."""
    return [n for n, cls in SYSTEMS.items() if group in ("all", cls.group)]


def all_cores() -> int:
    """Number of cores the workloads use (``n_jobs = all cores``)."""
    return os.cpu_count() or 1


def parse_names(parser: Any, text: str, known: Sequence[str]) -> list[str]:
    """The comma-separated names of `text`, each one of `known`; else the parser's error."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"give systems among {', '.join(known)}; unknown: {unknown}")
    return names


def run_child(module: str, name: str, timeout: float) -> dict[str, Any]:
    """Run ``python -m <module> --child <name>`` and return the JSON of its last line."""
    command = [sys.executable, "-m", module, "--child", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{module} --child {name} failed:\n{done.stderr[-2000:]}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record
