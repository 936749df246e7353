"""Run the benchmark grid: every (workload, system) cell in a fresh subprocess.

Usage (from the repository root)::

    python -m benchmarks.run --workloads W1,W2,F1 --systems serial,joblib-loky \\
        --repeat 3 --out results.json

Each cell is ``python -m benchmarks.cell WORKLOAD SYSTEM ...`` in its own
session (process group), with its output in temporary files. A cell that
outlives ``--timeout`` is killed with its whole process tree and reported
as a timeout; a cell that dies without printing its JSON line is reported
as a crash. After every cell, any process left in its group or carrying its
token in the environment or still in its session is killed. The tables go
to stdout (and to ``--markdown``), progress to stderr, and all records (with
the run's metadata) to ``--out`` as JSON.

``--rounds N`` runs the whole grid N times, every other round backwards, and
pools each cell's calls: on a machine whose speed drifts during the run (a
shared host), no system gets all the slow minutes.

``--systems`` takes system names and group names: ``default`` (the default
run), ``clusters`` (parlay and joblib on Dask and Ray), ``optional``, ``all``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchmarks.clusters  # registers the cluster systems
import benchmarks.libraries  # noqa: F401  (registers joblib's and parlay's systems)
from benchmarks import report
from benchmarks.context import add_fault_and_sampling_options, summary
from benchmarks.procs import (
    TOKEN_VAR,
    descendants,
    kill_all,
    marked,
    name_of,
    remove_shm_of,
    session_members,
)
from benchmarks.scenarios import WORKLOADS, calibrate_sort, calibrate_spin
from benchmarks.systems import GROUP_NAMES, SYSTEMS, all_cores, group_members

ROOT = Path(__file__).resolve().parent.parent
#: Seconds of a cell's timeout kept for its start-up, checks and clean-up:
#: measured calls that would end later are left out (``calls_cut``).
BUDGET_MARGIN_S = 20.0


def cell_env() -> dict[str, str]:
    """Environment of the cells: the repository's ``src`` and root first on the path.

    So ``parlay`` is the working tree's, installed or not, and worker
    processes can import ``benchmarks.workloads``.
    """
    env = os.environ.copy()
    paths = [str(ROOT / "src"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last line of ``stdout`` that is a JSON object, if any."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def sweep(pgid: int, token: str) -> list[str]:
    """Kill whatever is left of a cell: its process group, its token bearers, its session.

    The cell leads a session and a process group whose ids are its pid. Ray
    puts each worker in a process group of its own, and some of its agents
    do not carry the token: the session catches those. Returns the names of
    the processes killed besides the process group.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    left = {proc.pid: proc for proc in marked(token) + session_members(pgid)}
    names = sorted(name_of(proc) for proc in left.values())
    kill_all(list(left.values()))
    return names


def kill_cell(proc: subprocess.Popen[bytes]) -> int:
    """Kill a cell and its process tree; return the cell's exit code.

    The cell goes first, so its workers become orphans that init reaps.
    """
    orphans = descendants(proc.pid)
    proc.kill()
    code = proc.wait()
    kill_all(orphans)
    return code


def run_cell(
    workload: str, system: str, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    """Run one cell in a fresh subprocess and return its record."""
    token = uuid.uuid4().hex
    env = cell_env()
    env[TOKEN_VAR] = token
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.cell",
        workload,
        system,
        "--repeat",
        str(args.repeat),
        *extra,
    ]
    timed_out = False
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, cwd=ROOT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            code = kill_cell(proc)
        except BaseException:  # Ctrl-C: leave nothing behind
            kill_cell(proc)
            sweep(proc.pid, token)
            remove_shm_of(proc.pid)
            raise
        leftovers = sweep(proc.pid, token)
        remove_shm_of(proc.pid)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    record = last_json(stdout)
    if record is None:
        record = {
            "workload": workload,
            "system": system,
            "status": "timeout" if timed_out else "crash",
            "reason": "no result line",
            "stderr_tail": stderr[-1500:],
        }
    elif timed_out and record.get("status") == "running":
        record["status"] = "timeout"
    record.update(
        exit_code=code,
        cell_wall_s=time.perf_counter() - started,
        cell_timeout_s=args.timeout,
        leftover_processes_killed=len(leftovers),
        leftover_process_names=leftovers,
    )
    if record.get("status") in ("error", "crash") and stderr:
        record.setdefault("stderr_tail", stderr[-1500:])
    return record


# Memory figures merged over rounds by their maximum (the rest come from the first round).
_PEAKS = frozenset(
    {
        "tree_rss_peak_mb",
        "tree_rss_peak_extra_mb",
        "machine_used_peak_extra_mb",
        "processes_max",
        "threads_peak",
        "foreign_cpu_share",
    }
)


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for a cell run in several rounds: its measured calls pooled.

    The value is recomputed over every call of every round that succeeded (its scale
    and unit kept from the cell's own summary), start-up is the median of the rounds,
    and the memory and thread peaks are the highest seen. A round that failed makes
    the whole cell that round's record, since a failure is the news.
    """
    failed = [rec for rec in rounds if rec.get("status") != "ok"]
    if failed:
        return failed[0]
    timed = [rec for rec in rounds if rec.get("times_s") and "value" in rec]
    if len(timed) != len(rounds) or len(rounds) == 1:
        return rounds[-1]
    merged = dict(rounds[0])
    first = rounds[0]
    middle = statistics.median(first["times_s"])
    scale = first["value"]["median"] / middle if middle else 1.0
    times = [t for rec in timed for t in rec["times_s"]]
    merged["times_s"] = times
    merged["value"] = summary(times, first["value"]["unit"], scale)
    merged["rounds"] = len(rounds)
    starts = [rec["startup_s"] for rec in rounds if "startup_s" in rec]
    if starts:
        merged["startup_s"] = statistics.median(starts)
    memories = [rec["memory"] for rec in rounds if rec.get("memory")]
    if memories:
        memory = dict(memories[0])
        for key in _PEAKS & memory.keys():
            values = [m[key] for m in memories if isinstance(m.get(key), int | float)]
            if values:
                memory[key] = max(values)
        merged["memory"] = memory
    merged["cell_wall_s"] = sum(rec["cell_wall_s"] for rec in rounds)
    return merged


def progress(i: int, total: int, rec: dict[str, Any]) -> None:
    """One line per finished cell, on stderr."""
    text = report.cell_text(rec)
    print(
        f"[{i}/{total}] {rec['workload']:>6} {rec['system']:<22} {rec['status']:<11} "
        f"{text[:70]}  ({rec['cell_wall_s']:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def names(text: str | None, known: dict[str, Any], what: str, default: list[str]) -> list[str]:
    """Parse a comma-separated list of names, checked against ``known``."""
    if not text:
        return default
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def system_names(text: str | None) -> list[str]:
    """Parse ``--systems``: names and group names, expanded in order, without repeats."""
    groups = {g: group_members(g) for g in (*GROUP_NAMES, "all")}
    chosen = names(text or "default", {**SYSTEMS, **groups}, "system or group", [])
    expanded = [m for n in chosen for m in groups.get(n, [n])]
    return list(dict.fromkeys(expanded))


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments of the runner."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workloads", help=f"comma-separated, default all: {','.join(WORKLOADS)}")
    p.add_argument(
        "--systems",
        help="comma-separated systems or groups (default, clusters, optional, all); "
        "default: the default group (--list)",
    )
    p.add_argument("--repeat", type=int, default=3, help="measured calls per cell (default 3)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole grid this many times, interleaved, and pool each cell's "
        "calls (default 1): a machine whose speed drifts during the run then biases "
        "no system",
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds before a cell is killed (default 120)"
    )
    add_fault_and_sampling_options(p)
    p.add_argument("--ratios", help="ratio columns as a/b pairs, comma-separated")
    p.add_argument("--out", help="write all records as JSON to this file")
    p.add_argument("--markdown", help="also write the tables to this file")
    p.add_argument("--list", action="store_true", help="list workloads and systems, then exit")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.run``."""
    args = parse(argv)
    if args.list:
        print("workloads:", ", ".join(WORKLOADS))
        for group in GROUP_NAMES:
            print(f"group {group}: {', '.join(group_members(group))}")
        return 0
    workloads = names(args.workloads, WORKLOADS, "workload", list(WORKLOADS))
    systems = system_names(args.systems)
    pairs = tuple(args.ratios.split(",")) if args.ratios else report.DEFAULT_RATIOS
    # A hang inside a cell is caught by the cell's own watchdog, before the
    # runner's timeout, so the cell can still report what it measured.
    extra = [
        "--call-limit",
        str(max(5.0, args.timeout * 0.75)),
        "--budget",
        str(max(5.0, args.timeout - BUDGET_MARGIN_S)),
        "--fault-limit",
        str(min(args.fault_limit, args.timeout * 0.5)),
        "--sample-interval",
        str(args.sample_interval),
    ]
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": all_cores(),
        "repeat": args.repeat,
        "timeout_s": args.timeout,
    }
    if "W2" in workloads:
        meta["w2_loops"] = calibrate_spin()
        extra += ["--w2-loops", str(meta["w2_loops"])]
    if "W3" in workloads:
        meta["w3_sorts_per_task"] = calibrate_sort()
        extra += ["--w3-reps", str(meta["w3_sorts_per_task"])]
    calibration = {k: v for k, v in meta.items() if k.startswith("w")}
    if calibration:
        print(f"calibration: {json.dumps(calibration)}", file=sys.stderr, flush=True)
    meta["rounds"] = args.rounds
    cells = [(w, s) for w in workloads for s in systems]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {cell: [] for cell in cells}
    total = len(cells) * args.rounds
    done = 0
    for round_ in range(args.rounds):
        # Odd rounds go backwards: no system is always the first after a warm machine.
        for w, s in cells if round_ % 2 == 0 else reversed(cells):
            runs[w, s].append(run_cell(w, s, args, extra))
            done += 1
            progress(done, total, runs[w, s][-1])
    records = [merge_rounds(runs[cell]) for cell in cells]
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tables = report.render(records, workloads, systems, pairs)
    print(tables)
    if args.markdown:
        Path(args.markdown).write_text(tables)
        print(f"tables written to {args.markdown}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"meta": meta, "cells": records}, indent=1, ensure_ascii=False, default=str)
            + "\n"
        )
        print(f"results written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
