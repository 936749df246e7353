"""The workloads (W0..W6, F1..F3, import): what one cell does with a system.

Each :class:`Workload` has a ``run(adapter, ctx)`` function that receives a
started adapter (not started for ``import``) and a :class:`Context`, and
returns a dict merged into the cell's JSON. Every call to the system goes
through ``ctx.guard(...)``, which arms the cell's watchdog, so a call that
never returns is reported as a hang instead of blocking the cell.

Every run function returns a ``value`` dict (``median``, ``min``, ``max``,
``unit``): the primary metric shown in the tables and used for the ratios.
To add a workload, write a run function (here, or in a module of its own as
:mod:`benchmarks.faults` and :mod:`benchmarks.scikit` are) and add a
:class:`Workload` to :data:`WORKLOADS`.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import workloads
from benchmarks.context import Context, summary, time_calls
from benchmarks.faults import run_f1, run_f2, run_f3
from benchmarks.scikit import SKLEARN_IMPORTS, needs_joblib_route, run_w5, run_w6
from benchmarks.systems import Adapter

#: Target duration of one W2 / W3 task, in seconds.
TASK_TARGET_S = 0.040
#: W0: calls of one tiny task each, measured after W0_WARM_CALLS unmeasured ones.
W0_CALLS = 50
W0_WARM_CALLS = 3
W1_TASKS = 20_000
W2_TASKS = 32
W3_TASKS = 32
W3_SIZE = 2_000_000
#: W4: a 400 MB float64 array, summed in 32 slices, passed whole to every task.
W4_SIZE = 50_000_000
W4_TASKS = 32
#: Modules whose presence after ``import X`` the import workload reports.
HEAVY_MODULES = ("dask", "distributed", "ray", "joblib", "sklearn", "numpy")


# --------------------------------------------------------------------------
# calibration


def calibrate(
    make_task: Callable[[int], Callable[[], object]],
    start: int,
    target: float = TASK_TARGET_S,
    rounds: int = 3,
) -> int:
    """Find ``n`` such that ``make_task(n)()`` takes about ``target`` seconds.

    Assumes the task's duration is roughly proportional to ``n``.
    """
    n = start
    for _ in range(rounds):
        samples = []
        for _ in range(3):
            task = make_task(n)
            t0 = time.perf_counter()
            task()
            samples.append(time.perf_counter() - t0)
        took = statistics.median(samples)
        n = max(1, round(n * target / took))
    return n


def calibrate_spin() -> int:
    """Loop count of :func:`workloads.spin` for one ~40 ms task."""
    return calibrate(lambda n: lambda: workloads.spin(n), 200_000)


def calibrate_sort() -> int:
    """Number of sorts of 2M floats in :func:`workloads.sort_task` for ~40 ms.

    The task also draws its random array (a few ms), so the count is found
    with the generation included; it cannot go below one sort.
    """
    best, best_err = 1, float("inf")
    for reps in range(1, 9):
        samples = []
        for seed in range(3):
            t0 = time.perf_counter()
            workloads.sort_task(seed, W3_SIZE, reps)
            samples.append(time.perf_counter() - t0)
        err = abs(statistics.median(samples) - TASK_TARGET_S)
        if err < best_err:
            best, best_err = reps, err
        elif statistics.median(samples) > TASK_TARGET_S:
            break
    return best


# --------------------------------------------------------------------------
# performance workloads


def run_w0(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W0: the fixed cost of a call: 50 calls of one ``identity(1)`` task; ms per call.

    The count is fixed (``--repeat`` does not apply); a few unmeasured calls
    of the same task come first, after the engine's own warm-up.
    """
    args = [(1,)]

    def check(out: list[Any]) -> None:
        if out != [1]:
            raise AssertionError(f"W0 returned {out!r}")

    for k in range(W0_WARM_CALLS):
        with ctx.guard(f"unmeasured call {k + 1}/{W0_WARM_CALLS}"):
            check(adapter.run(workloads.identity, args))
    res = time_calls(adapter, ctx, workloads.identity, args, check, calls=W0_CALLS)
    res["value"] = summary(res["times_s"], "ms/call", 1e3)
    res["params"] = {"calls": W0_CALLS, "unmeasured_calls": W0_WARM_CALLS, "tasks_per_call": 1}
    return res


def run_w1(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W1: 20,000 identity tasks; the value is µs per task."""
    args = [(i,) for i in range(W1_TASKS)]
    expected = list(range(W1_TASKS))

    def check(out: list[Any]) -> None:
        if out != expected:
            raise AssertionError("W1 returned wrong results")

    chunksize = max(1, W1_TASKS // (4 * adapter.n_jobs))
    res = time_calls(adapter, ctx, workloads.identity, args, check, chunksize=chunksize)
    res["value"] = summary(res["times_s"], "µs/task", 1e6 / W1_TASKS)
    res["params"] = {"tasks": W1_TASKS, "chunksize_hint": chunksize}
    return res


def run_w2(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W2: 32 tasks of ~40 ms pure-Python arithmetic (GIL held)."""
    loops = ctx.options.w2_loops or calibrate_spin()
    expected = workloads.spin(loops)
    args = [(loops,)] * W2_TASKS

    def check(out: list[Any]) -> None:
        if len(out) != W2_TASKS or any(v != expected for v in out):
            raise AssertionError("W2 returned wrong results")

    res = time_calls(adapter, ctx, workloads.spin, args, check)
    res["value"] = summary(res["times_s"], "s")
    res["params"] = {"tasks": W2_TASKS, "loops": loops}
    return res


def run_w3(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W3: 32 tasks, each sorting a 2M-float array it draws itself (GIL released)."""
    reps = ctx.options.w3_reps or calibrate_sort()
    args = [(seed, W3_SIZE, reps) for seed in range(W3_TASKS)]

    def check(out: list[Any]) -> None:
        if len(out) != W3_TASKS or not all(0.4 < v < 0.6 for v in out):
            raise AssertionError("W3 returned wrong results")

    res = time_calls(adapter, ctx, workloads.sort_task, args, check)
    res["value"] = summary(res["times_s"], "s")
    res["params"] = {"tasks": W3_TASKS, "size": W3_SIZE, "sorts_per_task": reps}
    return res


def run_w4(adapter: Adapter, ctx: Context, *, shared: bool = False) -> dict[str, Any]:
    """W4: 32 tasks each summing a slice of a 400 MB array passed whole to every task.

    The array is made once per cell, in the parent, before the memory
    baseline: the memory columns show what passing it costs, over the cell's
    process tree and machine-wide. The value is the call time, s. With
    ``shared`` (W4s) the array is ``parlay.share(array)``, made before the
    baseline too, and the private original is dropped.
    """
    import numpy as np

    array = np.random.default_rng(0).random(W4_SIZE)
    if shared:
        import parlay

        array = parlay.share(array)
    bounds = [(k * W4_SIZE // W4_TASKS, (k + 1) * W4_SIZE // W4_TASKS) for k in range(W4_TASKS)]
    args = [(array, start, stop) for start, stop in bounds]
    expected = [workloads.slice_sum(array, start, stop) for start, stop in bounds]

    def check(out: list[Any]) -> None:
        if len(out) != W4_TASKS or not all(
            math.isclose(v, e, rel_tol=1e-9) for v, e in zip(out, expected, strict=True)
        ):
            raise AssertionError("W4 returned wrong results")

    res = time_calls(adapter, ctx, workloads.slice_sum, args, check)
    res["value"] = summary(res["times_s"], "s")
    res["params"] = {"tasks": W4_TASKS, "array_mb": round(array.nbytes / 2**20, 1)}
    return res


def run_w4s(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W4s: W4 with the array passed through ``parlay.share`` first."""
    return run_w4(adapter, ctx, shared=True)


def run_w1i(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """W1i: W1 with parlay's instruments on: ``progress=True`` in ``parlay.timeline()``.

    The timeline is entered before the measured calls and records all of them.
    """
    import parlay

    adapter.call_options["progress"] = True  # type: ignore[attr-defined]
    with parlay.timeline() as tl:
        res = run_w1(adapter, ctx)
    res["params"]["timeline_records"] = len(tl.records)
    return res


def _parlay_only(cls: type[Adapter]) -> str | None:
    return None if cls.version_module == "parlay" else "uses parlay's own API"


# --------------------------------------------------------------------------
# import time


def _python(stmt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", stmt],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )


def run_import(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """Time ``python -c "<import_stmt>"`` in fresh interpreters.

    Bare ``python -c pass`` runs are interleaved with them, so the cost of the
    import alone is reported too. The value is the median wall time, in ms.
    """
    stmt = type(adapter).import_stmt
    runs = max(5, ctx.options.repeat)
    times, bare = [], []
    for _ in range(runs):
        with ctx.guard("bare interpreter"):
            t0 = time.perf_counter()
            _python("pass")
            bare.append(time.perf_counter() - t0)
        with ctx.guard("import"):
            t0 = time.perf_counter()
            proc = _python(stmt)
            times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{stmt!r} failed: {proc.stderr.strip()[-300:]}")
    probe = f"{stmt}\nimport sys\nprint(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    loaded = _python(probe).stdout.strip()
    return {
        "value": summary(times, "ms", 1e3),
        "times_s": times,
        "import": {
            "statement": stmt,
            "bare_median_ms": statistics.median(bare) * 1e3,
            "extra_median_ms": (statistics.median(times) - statistics.median(bare)) * 1e3,
            "heavy_modules_loaded": [m for m in loaded.split(",") if m],
        },
    }


# --------------------------------------------------------------------------
# the registry


def _always(_: type[Adapter]) -> str | None:
    return None


def _needs_isolation(cls: type[Adapter]) -> str | None:
    if cls.isolated:
        return None
    return "tasks run in the calling process: os._exit would kill the benchmark itself"


def _needs_timeout(cls: type[Adapter]) -> str | None:
    return None if cls.supports_timeout else "the system has no timeout"


@dataclass(frozen=True)
class Workload:
    """A row of the result tables."""

    name: str
    title: str
    kind: str  # "perf", "fault" or "import"
    run: Callable[[Adapter, Context], dict[str, Any]]
    skip: Callable[[type[Adapter]], str | None] = _always
    needs_engine: bool = True
    #: Modules the warm-up imports in every worker (timed with the start-up).
    worker_imports: tuple[str, ...] = ()


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("import", "import time (ms)", "import", run_import, needs_engine=False),
        Workload("W0", "W0 one-task call (ms/call)", "perf", run_w0),
        Workload("W1", "W1 20k identity tasks (µs/task)", "perf", run_w1),
        Workload("W2", "W2 32 x 40 ms pure Python (s)", "perf", run_w2),
        Workload("W3", "W3 32 x 40 ms np.sort (s)", "perf", run_w3, worker_imports=("numpy",)),
        Workload(
            "W4", "W4 400 MB array to 32 tasks (s)", "perf", run_w4, worker_imports=("numpy",)
        ),
        Workload(
            "W4s",
            "W4s W4 with parlay.share(array) (s)",
            "perf",
            run_w4s,
            _parlay_only,
            worker_imports=("numpy",),
        ),
        Workload("W1i", "W1i W1 + progress + timeline (µs/task)", "perf", run_w1i, _parlay_only),
        Workload(
            "W5",
            "W5 RandomForest(200).fit (s)",
            "perf",
            run_w5,
            needs_joblib_route,
            worker_imports=SKLEARN_IMPORTS,
        ),
        Workload(
            "W6",
            "W6 GridSearchCV(RandomForest) (s)",
            "perf",
            run_w6,
            needs_joblib_route,
            worker_imports=SKLEARN_IMPORTS,
        ),
        Workload("F1", "F1 ValueError in task 7", "fault", run_f1),
        Workload("F2", "F2 os._exit in task 7", "fault", run_f2, _needs_isolation),
        Workload("F3", "F3 stuck task, timeout=2", "fault", run_f3, _needs_timeout),
    )
}
