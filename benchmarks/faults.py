"""The fault workloads F1..F3: how a system fails, how fast, and what is left.

All three use 100 or 200 tasks that each sleep 10 ms, so the whole call
would take ~0.5 s (F1, F2) or ~1 s plus the stuck task (F3) on 2 workers;
a system that fails fast answers long before that.

* F1: task 7 raises ``ValueError``. Value: time to the error (median of
  ``repeat`` calls). Also: the type raised, and whether the formatted
  traceback shows the task's own ``raise`` line (file/line, and source text).
* F2: task 7 calls ``os._exit(1)``. Value: time to the error (one call).
  Also: the type raised (or a hang, caught by the watchdog after
  ``fault_limit`` s), and whether a second call on the same system works.
* F3: task 7 is stuck for 60 s, the others sleep 10 ms, ``timeout=2``.
  Value: time to leave the call. Also: the type raised, whether it is a
  built-in ``TimeoutError``, whether the stuck task was stopped (it rewrites
  a heartbeat file every 50 ms; the file is watched for 3 s after the call
  leaves), and whether a second call works.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import psutil

from benchmarks import workloads
from benchmarks.context import Context, sampling, summary
from benchmarks.systems import Adapter

BAD_TASK = 7
SHORT_SLEEP_S = 0.01
F3_TASKS = 200
F3_STUCK_S = 60.0
F3_TIMEOUT_S = 2.0
#: How long the heartbeat of F3's stuck task is watched after the call leaves.
F3_WATCH_S = 3.0
NEXT_CALL_TASKS = 100


def describe(exc: BaseException) -> dict[str, Any]:
    """Type, module and message of an exception, JSON-ready."""
    kind = type(exc)
    return {
        "error_type": kind.__qualname__,
        "error_module": kind.__module__,
        "message": str(exc)[:300],
        "is_builtin_timeout_error": isinstance(exc, TimeoutError),
    }


def raise_line() -> tuple[str, int]:
    """File and line number of the ``raise`` in :func:`workloads.fail_at`."""
    lines, first = inspect.getsourcelines(workloads.fail_at)
    for offset, line in enumerate(lines):
        if workloads.F1_RAISE_TEXT in line:
            return inspect.getsourcefile(workloads.fail_at) or "", first + offset
    raise LookupError("raise line of fail_at not found")


def traceback_facts(exc: BaseException) -> dict[str, bool]:
    """Does the formatted traceback (with its causes) point at the task's raise?"""
    text = "".join(traceback.format_exception(exc))
    path, line = raise_line()
    name = os.path.basename(path)
    return {
        "traceback_has_source_line": workloads.F1_RAISE_TEXT in text,
        "traceback_has_location": f'{name}", line {line}' in text,
    }


def next_call(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """A plain call of 100 identity tasks after the fault: does it work?"""
    args = [(i,) for i in range(NEXT_CALL_TASKS)]
    with ctx.guard("next call"):
        start = time.perf_counter()
        try:
            out = adapter.run(workloads.identity, args)
        except Exception as exc:  # any failure is the finding
            return {
                "next_ok": False,
                "next_s": time.perf_counter() - start,
                "next_error": type(exc).__qualname__,
            }
        took = time.perf_counter() - start
    return {"next_ok": out == list(range(NEXT_CALL_TASKS)), "next_s": took}


def fault_call(fault: dict[str, Any], call: Callable[[], object]) -> float:
    """Make the call under test; record in `fault` how it ended and its time; return it."""
    start = time.perf_counter()
    try:
        call()
        fault["outcome"] = "returned"
    except Exception as exc:  # the fault under test
        fault["outcome"] = "raised"
        fault.update(describe(exc))
    took = time.perf_counter() - start
    fault["time_s"] = took
    return took


def run_f1(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """F1: a task raises ValueError; time to the error and its traceback."""
    args = [(i, BAD_TASK, SHORT_SLEEP_S) for i in range(100)]
    fault: dict[str, Any] = ctx.record.setdefault("fault", {})
    times: list[float] = ctx.record.setdefault("times_s", [])
    with sampling(ctx) as sampler:
        for r in range(ctx.options.repeat):
            with ctx.guard(f"fault call {r + 1}/{ctx.options.repeat}"):
                start = time.perf_counter()
                try:
                    adapter.run(workloads.fail_at, args)
                except Exception as exc:  # the fault under test
                    times.append(time.perf_counter() - start)
                    if r == 0:
                        fault.update(describe(exc))
                        fault.update(traceback_facts(exc))
                    continue
            raise AssertionError("F1: the call returned instead of raising")
    fault.update(next_call(adapter, ctx))
    return {
        "value": summary(times, "s"),
        "fault": fault,
        "memory": sampler.report(),
    }


def run_f2(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """F2: a task kills its worker; error type and time, then a second call."""
    args = [(i, BAD_TASK, SHORT_SLEEP_S) for i in range(100)]
    fault: dict[str, Any] = ctx.record.setdefault("fault", {})
    with ctx.guard("fault call", limit=ctx.options.fault_limit):
        took = fault_call(fault, lambda: adapter.run(workloads.die_at, args))
    fault.update(next_call(adapter, ctx))
    return {"value": summary([took], "s"), "fault": fault, "times_s": [took]}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except OSError:
        return None


def watch_heartbeat(path: str, window: float = F3_WATCH_S) -> dict[str, Any]:
    """Watch the stuck task's heartbeat file for ``window`` seconds.

    The task is "stopped" if it had started, had not finished by itself, and
    its heartbeat did not move during the last 0.5 s of the window.
    """
    begin = time.monotonic()
    last = _read(path)
    first_seen = last
    moved_at: float | None = None
    while time.monotonic() - begin < window:
        time.sleep(0.05)
        now = _read(path)
        if now != last:
            moved_at, last = time.monotonic() - begin, now
    started = last is not None
    finished = last == "done"
    running = moved_at is not None and window - moved_at < 0.5
    facts: dict[str, Any] = {
        "stuck_started": started,
        "stuck_finished_by_itself": finished,
        "stuck_stopped": started and not finished and not running,
        "stuck_last_heartbeat_after_leave_s": moved_at or 0.0,
    }
    owner = (first_seen or last or "").split()
    if len(owner) == 3:
        pid = int(owner[0])
        facts["stuck_in_caller_process"] = pid == os.getpid()
        facts["stuck_worker_alive"] = pid == os.getpid() or psutil.pid_exists(pid)
    return facts


def run_f3(adapter: Adapter, ctx: Context) -> dict[str, Any]:
    """F3: one stuck task and ``timeout=2``; does the call leave, is the task stopped?"""
    fault: dict[str, Any] = ctx.record.setdefault("fault", {})
    # A stuck task that runs in a thread of the cell cannot be stopped: it may
    # rewrite its heartbeat while the folder is removed, so removal is best effort.
    with tempfile.TemporaryDirectory(prefix="parlay-bench-f3-", ignore_cleanup_errors=True) as tmp:
        heartbeat = os.path.join(tmp, "heartbeat")
        args = [(i, BAD_TASK, SHORT_SLEEP_S, F3_STUCK_S, heartbeat) for i in range(F3_TASKS)]
        with ctx.guard("fault call"):
            took = fault_call(
                fault, lambda: adapter.run(workloads.stuck_at, args, timeout=F3_TIMEOUT_S)
            )
        fault.update(watch_heartbeat(heartbeat))
        # Still inside the directory's lifetime: a stuck task that was not
        # stopped keeps running (and keeps its worker busy) during this call.
        fault.update(next_call(adapter, ctx))
    return {"value": summary([took], "s"), "fault": fault, "times_s": [took]}
