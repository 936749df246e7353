"""Shared pieces of the workloads: options, context, timing and summaries."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from benchmarks.procs import MemorySampler
from benchmarks.systems import Adapter


@dataclass
class Options:
    """Per-cell settings, from the command line of ``benchmarks.cell``."""

    repeat: int = 3
    w2_loops: int | None = None
    w3_reps: int | None = None
    call_limit: float = 90.0
    #: ``time.monotonic()`` by which the measured calls must be over (the
    #: runner's timeout minus room to close); None: no limit.
    deadline: float | None = None
    fault_limit: float = 30.0
    sample_interval: float = 0.02


@dataclass
class Context:
    """What a workload's run function gets besides the adapter."""

    options: Options
    #: ``guard(phase, limit=None)``: arms the cell's watchdog around one call.
    guard: Callable[..., AbstractContextManager[None]]
    #: The cell's JSON, shared: facts written here survive a hang.
    record: dict[str, Any]


def summary(values: Sequence[float], unit: str, scale: float = 1.0) -> dict[str, Any]:
    """Median, min and max of ``values`` times ``scale``, with their unit."""
    scaled = [v * scale for v in values]
    return {
        "median": statistics.median(scaled),
        "min": min(scaled),
        "max": max(scaled),
        "unit": unit,
    }


def sampling(ctx: Context) -> MemorySampler:
    """The memory sampler for the measured calls (no thread if the interval is 0)."""
    return MemorySampler(ctx.options.sample_interval)


def time_calls(
    adapter: Adapter,
    ctx: Context,
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    check: Callable[[list[Any]], None],
    *,
    chunksize: int = 1,
    calls: int | None = None,
) -> dict[str, Any]:
    """Time ``adapter.run(fn, args)``: see :func:`time_repeated`."""
    return time_repeated(
        ctx, lambda: adapter.run(fn, args, chunksize=chunksize), check, calls=calls
    )


def time_repeated(
    ctx: Context,
    call: Callable[[], Any],
    check: Callable[[Any], None],
    *,
    calls: int | None = None,
) -> dict[str, Any]:
    """Run ``call()`` ``calls`` times (default ``repeat``) under the memory sampler.

    Inputs are made before this is called, so they are part of the memory
    baseline and not of the "extra" memory. Each call's result goes through
    ``check`` (outside the timed region), so a wrong answer fails the cell.
    If the next call would likely end after ``options.deadline`` (judging by
    the slowest call so far), the calls stop there and ``calls_cut`` says how
    many were made: the cell reports them instead of being killed.
    """
    times: list[float] = ctx.record.setdefault("times_s", [])
    deadline = ctx.options.deadline
    asked = ctx.options.repeat if calls is None else calls
    with sampling(ctx) as sampler:
        for r in range(asked):
            if times and deadline is not None and time.monotonic() + max(times) > deadline:
                ctx.record["calls_cut"] = {"made": r, "asked": asked}
                break
            with ctx.guard(f"call {r + 1}/{asked}"):
                start = time.perf_counter()
                out = call()
                times.append(time.perf_counter() - start)
            check(out)
    return {"times_s": times, "memory": sampler.report()}


def add_fault_and_sampling_options(parser: argparse.ArgumentParser) -> None:
    """The options the runner passes on to each cell, with one set of defaults."""
    parser.add_argument(
        "--fault-limit",
        type=float,
        default=30.0,
        help="seconds F2's fault call may take before it counts as a hang (default 30)",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=0.02,
        help="memory sampling period in seconds; 0 disables (default 0.02)",
    )
