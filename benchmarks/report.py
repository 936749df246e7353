"""Markdown tables from the cells' JSON records.

Six tables: the call time (or the fault summary) of every cell, ratios
between pairs of systems, ratios to ``serial``, the engines' start-up time,
and the peak extra memory and peak thread count during the measured calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Record = dict[str, Any]

#: Default ratio columns "a/b": a's value divided by b's (below 1: a is faster).
#: ``best`` stands for the row's fastest incumbent (any system but serial and parlay's).
#: Every system's ratio to serial has a table of its own.
DEFAULT_RATIOS = (
    "parlay-default/best",
    "parlay-processes/joblib-loky",
    "parlay-threads/joblib-threading",
    "parlay-processes/cf-processes",
    "parlay-threads/cf-threads",
    "parlay-dask/joblib-dask",
    "parlay-ray/joblib-ray",
)
BEST = "best"
#: Rows whose cells show the peak thread count beside the time.
THREAD_ROWS = ("W5", "W6")

TITLES = {
    "import": "import (ms)",
    "W0": "W0 ms/call",
    "W1": "W1 µs/task",
    "W2": "W2 s",
    "W3": "W3 s",
    "W4": "W4 s",
    "W4s": "W4s s (parlay.share)",
    "W1i": "W1i µs/task (progress + timeline)",
    "W5": "W5 s",
    "W6": "W6 s",
    "F1": "F1 ValueError",
    "F2": "F2 os._exit",
    "F3": "F3 timeout=2",
}

#: Cells during whose calls other processes used more than this share of the
#: machine's CPU capacity are flagged with BUSY_MARK.
BUSY_SHARE = 0.10
BUSY_MARK = " *"

YES, NO = "\u2713", "\u2717"
#: En dash between min and max; multiplication sign after a ratio.
DASH, TIMES = "\u2013", "\u00d7"


def num(value: float) -> str:
    """A number with about three significant digits, never in e-notation."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.001:
        return f"{value:.3g}"
    return f"{value:.5f}".rstrip("0").rstrip(".") or "0"


def megabytes(value: float) -> str:
    """A memory figure in MB: whole numbers from 10 MB up, one decimal below."""
    value = max(value, 0.0)
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def spread(value: dict[str, Any]) -> str:
    """``median (min-max)``, or just the median when there was one run."""
    if value["min"] == value["max"]:
        return num(value["median"])
    return f"{num(value['median'])} ({num(value['min'])}{DASH}{num(value['max'])})"


def mark(flag: object) -> str:
    """A check mark or a cross."""
    return YES if flag else NO


def clean(text: str) -> str:
    """Make text safe inside a Markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")


def status_text(rec: Record) -> str | None:
    """Text for a cell that did not run to completion, else None."""
    status = rec.get("status")
    if status == "ok":
        return None
    if status in ("n/a", "unavailable"):
        return str(status)
    if status == "hang":
        return clean(f"hang: {rec.get('reason', '')}")
    if status == "timeout":
        return f"TIMEOUT (killed after {num(rec.get('cell_timeout_s', 0))} s)"
    if status == "crash":
        return f"crash (exit {rec.get('exit_code')})"
    return clean(f"error: {str(rec.get('reason', status))[:60]}")


def fault_text(rec: Record) -> str:
    """Summary of a fault cell: what was raised, how fast, what followed."""
    fault, wl = rec.get("fault", {}), rec["workload"]
    raised = fault.get("error_type") or ("returned" if fault.get("outcome") == "returned" else "?")
    parts = [f"{raised} {spread(rec['value'])} s"]
    if wl == "F1":
        parts.append(f"tb {mark(fault.get('traceback_has_source_line'))}")
    if wl == "F3":
        parts.append(f"builtin {mark(fault.get('is_builtin_timeout_error'))}")
        stopped = f"stopped {mark(fault.get('stuck_stopped'))}"
        if fault.get("stuck_finished_by_itself"):
            stopped += " (ran to its end)"
        parts.append(stopped)
    if "next_ok" in fault:
        nxt = f"next {mark(fault['next_ok'])}"
        if fault.get("next_error"):
            nxt += f" ({fault['next_error']})"
        parts.append(nxt)
    return clean(" · ".join(parts))


def busy(rec: Record) -> str:
    """The mark of a cell disturbed by other processes, or nothing."""
    share = (rec.get("memory") or {}).get("foreign_cpu_share")
    return BUSY_MARK if share is not None and share > BUSY_SHARE else ""


def cell_text(rec: Record | None) -> str:
    """Text of one cell of the main table."""
    if rec is None:
        return ""
    text = status_text(rec)
    if text is not None:
        return text
    if rec["workload"].startswith("F"):
        return fault_text(rec) + busy(rec)
    body = spread(rec["value"]) + busy(rec)
    cut = rec.get("calls_cut")
    if cut:
        body += f" ({cut['made']} of {cut['asked']} calls)"
    threads = (rec.get("memory") or {}).get("threads_peak")
    if rec["workload"] in THREAD_ROWS and threads is not None:
        body += f" · {threads} thr"
    if rec["workload"] == "import":
        heavy = rec.get("import", {}).get("heavy_modules_loaded", [])
        if heavy:
            body += f" [{', '.join(heavy)}]"
    return body


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def index(records: Sequence[Record]) -> dict[tuple[str, str], Record]:
    """Records keyed by (workload, system)."""
    return {(r["workload"], r["system"]): r for r in records}


def primary(rec: Record | None) -> float | None:
    """The value a ratio uses: the median of a cell that completed."""
    if rec is None or rec.get("status") != "ok" or "value" not in rec:
        return None
    return float(rec["value"]["median"])


def grid(
    records: Sequence[Record],
    workloads: Sequence[str],
    systems: Sequence[str],
    text: Callable[[Record | None], str],
) -> str:
    """Rows = workloads, columns = systems, each cell ``text(record)``."""
    cells = index(records)
    rows = [[TITLES.get(w, w)] + [text(cells.get((w, s))) for s in systems] for w in workloads]
    return table(["workload", *systems], rows)


def main_table(records: Sequence[Record], workloads: Sequence[str], systems: Sequence[str]) -> str:
    """Rows = workloads, columns = systems."""
    return grid(records, workloads, systems, cell_text)


def incumbent(system: str) -> bool:
    """True for the systems parlay is compared with (not serial, not parlay's)."""
    return system != "serial" and not system.startswith("parlay-")


def best_incumbent(
    cells: dict[tuple[str, str], Record], workload: str, systems: Sequence[str]
) -> str | None:
    """The incumbent with the smallest value in a row, among those that ran."""
    ran = [(v, s) for s in systems if incumbent(s) and (v := primary(cells.get((workload, s))))]
    return min(ran)[1] if ran else None


def ratio_text(recs: Sequence[Record | None], note: str = "") -> str:
    """``a/b`` of two cells' values, flagged if either was disturbed; a dash if one is missing."""
    a, b = (primary(r) for r in recs)
    if a is None or not b:
        return DASH
    flag = BUSY_MARK if any(busy(r) for r in recs if r is not None) else ""
    return f"{a / b:.2f}{TIMES}{flag}{note}"


def ratio_table(
    records: Sequence[Record],
    workloads: Sequence[str],
    systems: Sequence[str],
    pairs: Sequence[str] = DEFAULT_RATIOS,
) -> str:
    """Ratios a/b of the primary values, for the pairs whose systems both ran."""
    cells = index(records)
    usable = [p for p in pairs if all(s in (*systems, BEST) for s in p.split("/"))]
    if not usable:
        return "(no ratio column: none of its system pairs was run)"
    rows = []
    for w in workloads:
        row = [TITLES.get(w, w)]
        for pair in usable:
            names = pair.split("/")
            note = ""
            if BEST in names:
                best = best_incumbent(cells, w, systems)
                names = [(best or "") if n == BEST else n for n in names]
                note = f" ({best})" if best else ""
            row.append(ratio_text([cells.get((w, s)) for s in names], note))
        rows.append(row)
    return table(["workload", *usable], rows)


def serial_table(
    records: Sequence[Record], workloads: Sequence[str], systems: Sequence[str]
) -> str:
    """Every system's value over serial's, row by row."""
    cells = index(records)
    others = [s for s in systems if s != "serial"]
    rows = [
        [TITLES.get(w, w)]
        + [ratio_text([cells.get((w, s)), cells.get((w, "serial"))]) for s in others]
        for w in workloads
    ]
    return table(["workload", *others], rows)


def startup_text(rec: Record | None) -> str:
    """Engine start-up (pool creation + warm-up call) in seconds."""
    return num(rec["startup_s"]) if rec is not None and "startup_s" in rec else DASH


def threads_text(rec: Record | None) -> str:
    """Peak threads alive in the cell's processes during the calls / before them."""
    mem = (rec or {}).get("memory") or {}
    peak = mem.get("threads_peak")
    return DASH if peak is None else f"{peak} / {mem.get('threads_baseline')}"


def fingerprint_note(records: Sequence[Record]) -> str:
    """Whether the cells of each W5/W6 row fitted the same model, as a sentence per row."""
    lines = []
    for w in THREAD_ROWS:
        found: dict[str, list[str]] = {}
        for rec in records:
            if rec["workload"] == w and rec.get("fingerprint"):
                found.setdefault(rec["fingerprint"], []).append(rec["system"])
        if len(found) == 1:
            lines.append(f"{w}: every system fitted the same model ({next(iter(found))}).")
        elif found:
            parts = "; ".join(f"{', '.join(v)}: {k}" for k, v in found.items())
            lines.append(f"{w}: the systems fitted DIFFERENT models: {parts}.")
    return "\n".join(lines)


def memory_text(rec: Record | None) -> str:
    """Peak extra MB during the calls: process-tree RSS / machine-wide used."""
    mem = (rec or {}).get("memory")
    if not mem:
        return DASH
    tree = megabytes(mem["tree_rss_peak_extra_mb"])
    return f"{tree} / {megabytes(mem['machine_used_peak_extra_mb'])}"


def render(
    records: Sequence[Record],
    workloads: Sequence[str],
    systems: Sequence[str],
    pairs: Sequence[str] = DEFAULT_RATIOS,
) -> str:
    """All tables, with headings, as one Markdown string."""
    perf = [w for w in workloads if not w.startswith("F") and w != "import"]
    engine = [w for w in workloads if w != "import"]
    parts = [
        f"## Call time: median (min{DASH}max) of the measured calls",
        main_table(records, workloads, systems),
        "F cells: exception raised · time to it (F3: time to leave the call) · "
        "tb = task's raise line in the traceback · builtin = isinstance(e, TimeoutError) · "
        "stopped = stuck task stopped · next = a second call on the same backend works. "
        f"{BUSY_MARK.strip()} = other processes used more than {BUSY_SHARE:.0%} of the "
        "machine's CPU during the calls (disturbed; rerun).",
        "## Ratios of medians (below 1: the first system is faster)",
        ratio_table(records, workloads, systems, pairs),
    ]
    if any(BEST in pair.split("/") for pair in pairs):
        parts.append(
            f"`{BEST}`: the row's fastest incumbent (not serial, not parlay's), named in brackets."
        )
    if "serial" in systems:
        parts += [
            "## Ratios to serial (below 1: faster than serial)",
            serial_table(records, workloads, systems),
        ]
    parts += [
        "## Engine start-up: pool creation + warm-up call (s)",
        grid(records, engine, systems, startup_text),
    ]
    if perf:
        parts += [
            "## Peak extra memory during the calls (MB): process-tree RSS / machine used",
            grid(records, perf, systems, memory_text),
            "## Peak threads alive in the cell's processes during the calls / before the first",
            grid(records, perf, systems, threads_text),
        ]
    note = fingerprint_note(records)
    if note:
        parts.append(note)
    return "\n\n".join(parts) + "\n"
