"""Cores, n_jobs arithmetic and the nesting budget each running task carries.

The budget is the number of cores a running task may use for parallel work of its own.
It travels with the task: a contextvar in the caller and in thread workers (each batch
runs in a copy of the caller's context), and a field of the batch payload for workers
in other processes, where :func:`parlay._worker.run_batch` sets the same contextvar. It
is never a process global that concurrent calls could race on.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BLAS",
    "BlasLimiter",
    "Nesting",
    "cpu_count",
    "current_nesting",
    "n_jobs_to_workers",
    "split_budget",
]


@dataclass(frozen=True, slots=True)
class Nesting:
    """Where the current code runs: at top level, or inside a task of a parallel call.

    Attributes
    ----------
    level : int
        0 at top level; 1 inside a task of a top-level call; and so on.
    budget : int or None
        The cores this code may use; None at top level, where it is :func:`cpu_count`.
    parent : str
        The backend and worker count of the call that gave the budget, for ``explain()``.
    """

    level: int = 0
    budget: int | None = None
    parent: str = ""


TOP_LEVEL: Final = Nesting()
_NESTING: contextvars.ContextVar[Nesting] = contextvars.ContextVar(
    "parlay_nesting", default=TOP_LEVEL
)


def current_nesting() -> Nesting:
    """Return the nesting record of the running code (``TOP_LEVEL`` outside any task)."""
    return _NESTING.get()


def set_nesting(nesting: Nesting) -> contextvars.Token[Nesting]:
    """Enter `nesting` in the current context; reset with the returned token."""
    return _NESTING.set(nesting)


def reset_nesting(token: contextvars.Token[Nesting]) -> None:
    """Leave the nesting entered with :func:`set_nesting`."""
    _NESTING.reset(token)


_cpu_count_cache: dict[bool, int] = {}


def cpu_count(only_physical_cores: bool = False) -> int:
    """Return the number of CPUs this process may use.

    Honours CPU affinity, cgroup quotas (containers) and ``LOKY_MAX_CPU_COUNT``, as
    loky's ``cpu_count`` does, which this calls.

    Parameters
    ----------
    only_physical_cores : bool, default=False
        Count physical cores only, not hyper-threads, where the platform tells them apart.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> from parlay import cpu_count
    >>> cpu_count() >= 1
    True
    """
    if not isinstance(only_physical_cores, bool):
        raise TypeError(
            f"only_physical_cores must be a bool, got {type(only_physical_cores).__name__}"
        )
    # loky reads cgroups and affinity; imported here, not at module level, to keep
    # `import parlay` fast. Cached: the quota does not change under a running process,
    # and the call reads several files.
    if only_physical_cores not in _cpu_count_cache:
        from loky import cpu_count as _loky_cpu_count

        _cpu_count_cache[only_physical_cores] = max(
            1, int(_loky_cpu_count(only_physical_cores=only_physical_cores))
        )
    return _cpu_count_cache[only_physical_cores]


def n_jobs_to_workers(n_jobs: int, cores: int) -> int:
    """Turn joblib's n_jobs into a worker count over `cores` cores.

    ``-1`` means all cores, ``-2`` all but one, and so on down to 1; a positive value is
    taken as it is. 0 is rejected earlier, at validation.
    """
    if n_jobs < 0:
        return max(cores + 1 + n_jobs, 1)
    return n_jobs


def split_budget(cores: int, workers: int) -> int:
    """Cores each of `workers` concurrent tasks may use, out of `cores`."""
    return max(1, cores // max(1, workers))


def env_int(name: str) -> int | None:
    """Read an integer environment variable, None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


# Read by native libraries when they load: how worker processes start with a limit on
# the pools that a task's imports create after the worker began.
THREAD_ENV_VARS: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_env(budget: int) -> dict[str, str]:
    """Environment for a worker process whose tasks may use `budget` threads.

    A variable the user set in this process is passed on as it is.
    """
    return {name: os.environ.get(name, str(budget)) for name in THREAD_ENV_VARS}


class BlasLimiter:
    """The process's native thread pools (BLAS, OpenMP) limited to the tightest active budget.

    threadpoolctl's limits are process-wide, and two overlapping ``threadpool_limits``
    contexts from two threads restore each other's values wrongly. So each process has
    one limiter, reference-counted: holders :meth:`acquire` and :meth:`release` a budget,
    the pools are limited to the smallest one held, and the original limits come back when
    the last holder leaves. A process worker keeps its budget between batches
    (:meth:`keep`): the process is parlay's, and limiting once per change costs nothing
    per batch.

    Thread workers in the caller's process hold their tasks' budget for each batch
    (:meth:`held`): while any batch runs, the process's pools are limited to the smallest
    budget held, and they are restored when the last one ends. (OpenBLAS's and MKL's
    per-thread settings are not enough here: measured with OpenBLAS 0.3.31,
    ``openblas_set_num_threads_local`` from two threads at once changed the process-wide
    value and left it changed.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[int] = []
        self._kept: int | None = None
        self._limits: Any = None
        self._applied: int | None = None
        self._controller: Any = None
        self._modules_seen = 0
        # OpenMP's count as parlay last set it in each of its worker threads.
        self._thread_omp = threading.local()

    def _pools(self) -> Any:
        """threadpoolctl's controller of the loaded pools, rescanned after new imports."""
        if self._controller is None or len(sys.modules) != self._modules_seen:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
            self._modules_seen = len(sys.modules)
        return self._controller

    @contextlib.contextmanager
    def held(self, n_threads: int) -> Iterator[None]:
        """Hold a limit of `n_threads` for the block (a batch on a thread worker).

        OpenMP's thread count is a setting of each thread: the process-wide limit set it
        in whichever thread applied it, so this thread's is set here too.
        """
        self.acquire(n_threads)
        undo: list[Callable[[], object]] = []
        try:
            mark = (n_threads, len(sys.modules))  # a new import may bring a new pool
            if getattr(self._thread_omp, "value", None) != mark:
                with self._lock:
                    pools = list(self._pools().lib_controllers)
                for lib in pools:
                    if lib.user_api == "openmp" and lib.num_threads > n_threads:
                        undo.append(functools.partial(lib.set_num_threads, lib.num_threads))
                        lib.set_num_threads(n_threads)
                # Skip the lookup next time in this thread, while nothing was undone:
                # only parlay's own worker threads keep their setting between batches.
                if not undo or _is_parlay_worker_thread():
                    self._thread_omp.value = mark
                    undo.clear()
            yield
        finally:
            for restore in reversed(undo):
                restore()
            self.release(n_threads)

    def acquire(self, n_threads: int) -> None:
        """Hold a limit of `n_threads` until :meth:`release`."""
        with self._lock:
            self._held.append(n_threads)
            self._apply()

    def release(self, n_threads: int) -> None:
        """Give back a limit taken with :meth:`acquire`."""
        with self._lock:
            self._held.remove(n_threads)
            self._apply()

    def keep(self, n_threads: int) -> None:
        """Hold `n_threads` for the life of this (worker) process, replacing the last kept."""
        with self._lock:
            if self._kept == n_threads:
                return
            if self._kept is not None:
                self._held.remove(self._kept)
            self._kept = n_threads
            self._held.append(n_threads)
            # Libraries a task loads later read these when they load.
            os.environ.update({name: str(n_threads) for name in THREAD_ENV_VARS})
            self._apply()

    def _apply(self) -> None:
        target = min(self._held) if self._held else None
        if target == self._applied:
            return
        if self._limits is not None:
            self._limits.restore()
            self._limits = None
        if target is not None:
            # OpenMP's count is a setting of each thread: set process-wide from whichever
            # thread applies or restores the limit, it was left at one thread in the
            # caller's thread when another thread restored it (seen in the test suite).
            # In the caller's process each thread worker sets its own (held); a worker
            # process runs its tasks in the thread that keeps the limit.
            self._limits = _Limit(self._pools(), target, openmp=self._kept is not None)
        self._applied = target


def _is_parlay_worker_thread() -> bool:
    return threading.current_thread().name.startswith("parlay-thread")


class _Limit:
    """Every loaded native pool limited to `n_threads` threads, until :meth:`restore`.

    OpenBLAS is set through ``openblas_set_num_threads_local`` where it exists (0.3.27
    and later), which works from any thread: measured here with OpenBLAS 0.3.31, once
    the main thread has set a limit with ``openblas_set_num_threads`` (what threadpoolctl
    calls), the same call from another thread is ignored. Other pools go through
    threadpoolctl.
    """

    def __init__(self, controller: Any, n_threads: int, *, openmp: bool = True) -> None:
        self._undo: list[Callable[[], object]] = []
        for lib in controller.lib_controllers:
            if lib.user_api == "openmp" and not openmp:
                continue
            previous = lib.num_threads
            if previous == n_threads:
                continue
            dynlib = getattr(lib, "dynlib", None)
            setter = getattr(dynlib, "openblas_set_num_threads_local", None)
            if lib.internal_api == "openblas" and setter is not None:
                setter(n_threads)
                self._undo.append(functools.partial(setter, previous))
            else:
                lib.set_num_threads(n_threads)
                self._undo.append(functools.partial(lib.set_num_threads, previous))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


BLAS = BlasLimiter()
