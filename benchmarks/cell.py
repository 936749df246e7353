"""Run one (workload, system) cell and print its result as one JSON line.

Usage (from the repository root)::

    python -m benchmarks.cell W2 joblib-loky --repeat 3

The cell times the engine's start-up (pool creation plus a warm-up call)
apart from the measured calls, then runs the workload. Every call is
guarded by a watchdog thread: if a call does not return within its limit,
the cell prints what it knows with ``"status": "hang"``, kills its worker
processes and exits with code 3. When the cell is done it closes the
engine, kills any remaining descendant process, and leaves with
``os._exit`` so that a stuck worker thread cannot hold the exit up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any, NoReturn

import benchmarks.clusters  # registers the cluster systems
import benchmarks.libraries  # noqa: F401  (registers joblib's and parlay's systems)
from benchmarks.context import Context, Options, add_fault_and_sampling_options
from benchmarks.procs import kill_tree
from benchmarks.scenarios import WORKLOADS
from benchmarks.systems import SYSTEMS, all_cores

#: Seconds allowed for closing the engine after the result is printed.
CLOSE_LIMIT_S = 15.0
EXIT_OK, EXIT_ERROR, EXIT_HANG = 0, 1, 3


class Reporter:
    """Prints the cell's record exactly once, then kills workers and exits."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self._lock = threading.Lock()
        self._emitted = False

    def emit(self) -> None:
        """Print the record as one JSON line (only the first time)."""
        with self._lock:
            if self._emitted:
                return
            self._emitted = True
            for _ in range(5):  # the main thread may be mutating the record
                try:
                    line = json.dumps(self.record, default=str, ensure_ascii=False)
                    break
                except RuntimeError:
                    time.sleep(0.01)
            else:
                line = json.dumps(
                    {k: self.record.get(k) for k in ("workload", "system")}
                    | {"status": "error", "reason": "record unprintable"}
                )
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def finish(self, code: int) -> NoReturn:
        """Emit (if not yet done), kill every descendant and exit at once."""
        self.emit()
        for _ in range(3):  # a pool's manager thread may spawn while we kill
            if kill_tree() == 0:
                break
        sys.stderr.flush()
        os._exit(code)


class Watchdog:
    """Arms a timer around each call; when it fires, the cell reports a hang."""

    def __init__(self, reporter: Reporter, default_limit: float) -> None:
        self.reporter = reporter
        self.default_limit = default_limit

    @contextmanager
    def guard(self, phase: str, limit: float | None = None) -> Iterator[None]:
        """Run the body with the watchdog armed for ``limit`` seconds."""
        seconds = limit if limit is not None else self.default_limit
        self.reporter.record["phase"] = phase
        timer = threading.Timer(seconds, self._fire, args=(phase, seconds))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _fire(self, phase: str, seconds: float) -> None:
        record = self.reporter.record
        if record.get("status") == "running":
            record["status"] = "hang"
            record["reason"] = f"{phase}: no answer within {seconds:g} s"
        self.reporter.finish(EXIT_HANG)


def versions(system_version: str | None) -> dict[str, str | None]:
    """Versions of Python, the system's library and the packages around it.

    Read from the installed metadata, so nothing is imported for it.
    """
    out: dict[str, str | None] = {"python": platform.python_version(), "system": system_version}
    for name in (
        "numpy",
        "psutil",
        "joblib",
        "loky",
        "parlay",
        "dask",
        "distributed",
        "ray",
        "scikit-learn",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_cell(
    workload: str, system: str, options: Options, reporter: Reporter, watchdog: Watchdog
) -> int:
    """Fill ``reporter.record`` for one cell; return the exit code."""
    record = reporter.record
    spec, cls = WORKLOADS[workload], SYSTEMS[system]
    unavailable = cls.unavailable_reason()
    if unavailable is not None:
        record.update(status="unavailable", reason=unavailable)
        return EXIT_OK
    skip = spec.skip(cls)
    if skip is not None:
        record.update(status="n/a", reason=skip)
        return EXIT_OK
    record["versions"] = versions(cls.version())
    if cls.version_module == "parlay":
        record["parlay_file"] = getattr(sys.modules["parlay"], "__file__", None)
    adapter = cls(options_n_jobs(record))
    ctx = Context(options=options, guard=watchdog.guard, record=record)
    try:
        if spec.needs_engine:
            cls.preload()
            with watchdog.guard("startup"):
                start = time.perf_counter()
                adapter.start(spec.worker_imports)
                record["startup_s"] = time.perf_counter() - start
            record.update(warm_workers=adapter.warm_workers, warm_calls=adapter.warm_calls)
        record.update(spec.run(adapter, ctx))
        record["status"] = "ok"
        code = EXIT_OK
    except Exception as exc:  # reported, not hidden
        record.update(
            status="error",
            reason=f"{type(exc).__qualname__}: {exc}"[:500],
            error_traceback="".join(traceback.format_exception(exc))[-2000:],
        )
        code = EXIT_ERROR
    record["phase"] = "done"
    reporter.emit()
    with watchdog.guard("close", limit=CLOSE_LIMIT_S):
        try:
            adapter.close()
        except Exception:  # closing is best effort
            pass
    return code


def options_n_jobs(record: dict[str, Any]) -> int:
    """The number of workers: all cores (recorded in the cell's JSON)."""
    n_jobs = all_cores()
    record["n_jobs"] = n_jobs
    return n_jobs


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments of one cell."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cell",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", choices=list(WORKLOADS))
    p.add_argument("system", choices=list(SYSTEMS))
    p.add_argument("--repeat", type=int, default=3, help="measured calls (default 3)")
    p.add_argument(
        "--w2-loops",
        type=int,
        default=None,
        help="W2 loop count per task (default: calibrate to ~40 ms here)",
    )
    p.add_argument(
        "--w3-reps",
        type=int,
        default=None,
        help="W3 sorts per task (default: calibrate to ~40 ms here)",
    )
    p.add_argument(
        "--call-limit",
        type=float,
        default=90.0,
        help="seconds one call may take before the cell reports a hang",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds from the cell's start by which the measured calls must be over; "
        "repeats that would not fit are left out (default: no limit)",
    )
    add_fault_and_sampling_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: run the cell, print its JSON line, clean up, exit."""
    args = parse(argv)
    options = Options(
        repeat=max(1, args.repeat),
        w2_loops=args.w2_loops,
        w3_reps=args.w3_reps,
        call_limit=args.call_limit,
        deadline=None if args.budget is None else time.monotonic() + args.budget,
        fault_limit=args.fault_limit,
        sample_interval=args.sample_interval,
    )
    record: dict[str, Any] = {
        "workload": args.workload,
        "system": args.system,
        "status": "running",
        "phase": "init",
        "repeat": options.repeat,
        "cell_pid": os.getpid(),
    }
    reporter = Reporter(record)
    watchdog = Watchdog(reporter, options.call_limit)
    code = run_cell(args.workload, args.system, options, reporter, watchdog)
    reporter.finish(code)


if __name__ == "__main__":
    main()
