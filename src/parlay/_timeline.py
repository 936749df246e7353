"""The task-stream timeline: every task of every call in a block, where and when it ran.

``with parlay.timeline() as tl:`` attaches a :class:`Timeline` to every call made in the
block (``parallel_config(instruments=[tl])``), joblib and scikit-learn calls through the
bridge included. The timeline asks workers for per-task times (``task_times``) and keeps
each :class:`BatchReport` as it arrives, under a lock, since reports of nested calls and of
joblib calls come from worker and engine callback threads. Records, insights and pictures
are built from the kept reports only when asked for, so that recording costs one append a
batch in the caller.

Pictures are drawn by Bokeh (an interactive HTML page, its JavaScript inlined so the page
needs no network) and matplotlib (PNG, SVG, PDF), both imported only when a picture is
made: ``pip install "parlay[timeline]"``.
"""

from __future__ import annotations

import contextlib
import html
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ._config import parallel_config
from ._instrument import BatchReport, CallInfo, Instrument, TaskRecord
from ._worker import host_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CallRecord", "Timeline", "WorkerInsight", "timeline"]

SUFFIXES: Final = (".html", ".png", ".svg", ".pdf")
_EXTRA: Final = 'pip install "parlay[timeline]"'
# matplotlib's tab10, which is also Bokeh's Category10: the two pictures share colours.
PALETTE: Final = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_ERROR_COLOR: Final = "#d62728"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call seen by a timeline.

    Attributes
    ----------
    call : CallInfo
        What the call was (backend, workers, nesting level, ``via``, start time).
    end : float or None
        When it ended (``time.time()``); None while it runs.
    error : BaseException or None
        What ended it, when it did not end normally.
    """

    call: CallInfo
    end: float | None = None
    error: BaseException | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from the call's start to its end (None while it runs)."""
        return None if self.end is None else self.end - self.call.started


@dataclass(frozen=True, slots=True)
class WorkerInsight:
    """How one worker spent one call: computing, moving data, or waiting.

    Attributes
    ----------
    call_id : int
        The call (see :attr:`CallInfo.call_id`).
    backend : str
        The call's backend.
    worker : str
        The worker's label (with its host when it is not this machine).
    host, pid, thread : str, int, str
        Where the worker runs: a timeline row.
    n_tasks : int
        Tasks of the call it ran.
    span : float
        Seconds from the call's start to its end.
    computing : float
        Seconds its tasks ran (the sum of their durations).
    moving_data : float
        Seconds a worker process spent unpickling the call's batches (0 for threads).
    waiting : float
        The rest of the span: waiting for batches, sending results, idle.
    """

    call_id: int
    backend: str
    worker: str
    host: str
    pid: int
    thread: str
    n_tasks: int
    span: float
    computing: float
    moving_data: float
    waiting: float

    def share(self, seconds: float) -> float:
        """`seconds` as a fraction of the call's span (0 for an empty span)."""
        return seconds / self.span if self.span > 0 else 0.0


class Timeline(Instrument):
    """Records every task of the calls it is attached to.

    Attach one with :func:`parlay.timeline` (every call in a block), or pass it to a
    single call: ``Parallel(instruments=[tl])``. Times are ``time.time()`` seconds, so
    tasks of worker processes on this machine share one clock; tasks that ran on other
    hosts are placed by those hosts' clocks.

    Records are complete for the calls made in the caller's process and in thread
    workers (nested calls on threads included). Calls made inside tasks running in
    worker processes are not seen: instruments stay in the caller.

    Examples
    --------
    >>> import parlay
    >>> from parlay.testing import square
    >>> with parlay.timeline() as tl:
    ...     _ = parlay.Parallel(n_jobs=2, backend="threads")(
    ...         parlay.delayed(square)(i) for i in range(10)
    ...     )
    >>> sorted(r.task for r in tl.records)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> [c.call.backend for c in tl.calls]
    ['threads']
    """

    task_times: ClassVar[bool] = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: list[tuple[CallInfo, BatchReport]] = []
        self._calls: dict[int, CallRecord] = {}

    def __repr__(self) -> str:
        with self._lock:
            n_calls = len(self._calls)
            n_tasks = sum(batch.n_tasks for _, batch in self._batches)
        return f"<Timeline: {n_calls} calls, {n_tasks} tasks>"

    # -- the instrument's hooks ---------------------------------------------------------

    def call_started(self, call: CallInfo) -> None:
        with self._lock:
            self._calls[call.call_id] = CallRecord(call)

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        with self._lock:
            self._batches.append((call, batch))

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        with self._lock:
            self._calls[call.call_id] = CallRecord(call, time.time(), error)

    # -- records --------------------------------------------------------------------------

    @property
    def calls(self) -> list[CallRecord]:
        """Every call seen, in the order they started."""
        with self._lock:
            calls = list(self._calls.values())
        return sorted(calls, key=lambda c: (c.call.started, c.call.call_id))

    @property
    def records(self) -> list[TaskRecord]:
        """One :class:`TaskRecord` a task, sorted by start time.

        A joblib call (``CallInfo.via == "joblib"``) runs its tasks in joblib's batches,
        and each batch is one record, numbered by its first joblib task.
        """
        records: list[TaskRecord] = []
        for call, batch in self._reports():
            records.extend(_task_records(call, batch))
        records.sort(key=lambda r: (r.start, r.call_id, r.task))
        return records

    def _reports(self) -> list[tuple[CallInfo, BatchReport]]:
        with self._lock:
            return list(self._batches)

    def to_dataframe(self) -> Any:
        """The records as a pandas ``DataFrame``, one row a task, with a ``duration`` column.

        Raises
        ------
        ImportError
            If pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "Timeline.to_dataframe() needs pandas, which is not installed: pip install pandas"
            ) from exc
        frame = pd.DataFrame.from_records(self.records, columns=list(TaskRecord._fields))
        frame["duration"] = frame["end"] - frame["start"]
        return frame

    # -- insights -------------------------------------------------------------------------

    def insights(self) -> list[WorkerInsight]:
        """How busy each worker was in each call: computing, moving data, waiting.

        Rows come by call (in start order), then by worker (by first task). Workers of a
        call that ran none of its tasks have no row.
        """
        tallies: dict[tuple[int, str, int, str], _Tally] = {}
        last: dict[int, float] = {}
        for call, batch in self._reports():
            tasks = _task_records(call, batch)
            key = (call.call_id, batch.host, batch.pid, batch.thread)
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = _Tally(call, batch.worker, batch.received)
            tally.n_tasks += len(tasks)
            tally.computing += sum(t.end - t.start for t in tasks)
            tally.moving_data += batch.load_seconds
            tally.first = min([tally.first, *(t.start for t in tasks)])
            last[call.call_id] = max(last.get(call.call_id, 0.0), batch.received)
        ends = {c.call.call_id: c.end for c in self.calls}
        here = host_name()
        rows = []
        ordered = sorted(
            tallies.items(), key=lambda kv: (kv[1].call.started, kv[0][0], kv[1].first)
        )
        for (call_id, host, pid, thread), tally in ordered:
            span = max((ends.get(call_id) or last[call_id]) - tally.call.started, 0.0)
            waiting = max(span - tally.computing - tally.moving_data, 0.0)
            label = tally.worker if host == here else f"{host} {tally.worker}"
            rows.append(
                WorkerInsight(
                    call_id,
                    tally.call.backend,
                    label,
                    host,
                    pid,
                    thread,
                    tally.n_tasks,
                    span,
                    tally.computing,
                    tally.moving_data,
                    waiting,
                )
            )
        return rows

    def summary(self) -> str:
        """A text table of :meth:`insights`: for each call, how each worker spent it."""
        calls = {c.call.call_id: c for c in self.calls}
        by_call: dict[int, list[WorkerInsight]] = {}
        for row in self.insights():
            by_call.setdefault(row.call_id, []).append(row)
        if not calls:
            return "no parallel call was recorded"
        lines = []
        for call_id, record in calls.items():
            rows = by_call.get(call_id, [])
            lines.append(_call_title(record, rows))
            if not rows:
                continue
            width = max(len("worker"), *(len(r.worker) for r in rows))
            lines.append(
                f"  {'worker':<{width}}  {'tasks':>6}  {'computing':>16}  "
                f"{'moving data':>16}  {'waiting':>16}"
            )
            for r in rows:
                cells = [f"{seconds(s):>10} {r.share(s):5.1%}" for s in _parts(r)]
                lines.append(f"  {r.worker:<{width}}  {r.n_tasks:>6}  " + "  ".join(cells))
        return "\n".join(lines)

    # -- pictures -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the timeline to `path`: an interactive page (.html) or a picture.

        The page needs no network to view: Bokeh's JavaScript is inlined. Rows are
        workers, bars are tasks coloured by function; failed tasks are outlined in red
        and hatched; hovering a bar names its call, task, function, worker and times.
        Below it, a table of :meth:`insights`. A ``.png``, ``.svg`` or ``.pdf`` path gets
        :meth:`plot`'s figure. A timeline without tasks gives an empty page or figure that
        says so.

        Parameters
        ----------
        path : str or os.PathLike
            Where to write; its suffix picks the format: .html, .png, .svg or .pdf.

        Returns
        -------
        pathlib.Path
            The path written.

        Raises
        ------
        ValueError
            If the suffix is none of those.
        ImportError
            If Bokeh (.html) or matplotlib (the others) is not installed.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in SUFFIXES:
            raise ValueError(
                f"Timeline.save(path): path must end in one of {', '.join(SUFFIXES)}; "
                f"got {os.fspath(path)!r}"
            )
        if suffix == ".html":
            target.write_text(self.to_html(), encoding="utf-8")
        else:
            self.plot().savefig(target)
        return target

    def to_html(self) -> str:
        """The interactive page of :meth:`save`, as a string (Bokeh, resources inlined)."""
        try:
            from bokeh.embed import file_html
            from bokeh.resources import INLINE
        except ImportError as exc:
            raise ImportError(
                f"an HTML timeline needs Bokeh, which is not installed: {_EXTRA}"
            ) from exc
        return file_html(self._bokeh_layout(), INLINE, title="parlay timeline")

    def plot(self) -> Figure:
        """The timeline as a matplotlib ``Figure``: one row a worker, one bar a task.

        The figure is not registered with ``pyplot``: display it in a notebook as the
        cell's value, or write it with ``fig.savefig(...)``.

        Raises
        ------
        ImportError
            If matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.patches import Patch
        except ImportError as exc:
            raise ImportError(
                f"Timeline.plot() needs matplotlib, which is not installed: {_EXTRA}"
            ) from exc
        bars = _Bars(self.records)
        figure = Figure(figsize=(10, 1.6 + 0.35 * max(len(bars.rows), 1)), layout="constrained")
        axes = figure.add_subplot()
        axes.set_xlabel("seconds since the first task started")
        axes.set_title("parlay timeline" if bars.rows else "parlay timeline: no task recorded")
        if not bars.rows:
            axes.set_yticks([])
            return figure

        def draw(indices: list[int], **style: Any) -> None:
            rows = [bars.row_of[i] for i in indices]
            widths = [bars.duration[i] for i in indices]
            axes.barh(rows, widths, left=[bars.left[i] for i in indices], height=0.8, **style)

        for function, color in bars.colors.items():
            draw([i for i, r in enumerate(bars.records) if r.function == function], color=color)
        failed = [i for i, r in enumerate(bars.records) if r.status != "ok"]
        if failed:
            draw(failed, fill=False, edgecolor=_ERROR_COLOR, hatch="xx", linewidth=1.5)
        axes.set_yticks(range(len(bars.rows)), labels=bars.rows)
        axes.invert_yaxis()
        handles = [Patch(color=c, label=f) for f, c in list(bars.colors.items())[:12]]
        if failed:
            handles.append(Patch(fill=False, edgecolor=_ERROR_COLOR, hatch="xx", label="error"))
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
        return figure

    def _bokeh_layout(self) -> Any:
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource, FactorRange, HoverTool
        from bokeh.models.widgets.markups import Div
        from bokeh.plotting import figure

        bars = _Bars(self.records)
        rows = bars.rows or ["(no task recorded)"]
        plot = figure(
            title="parlay timeline" if bars.rows else "parlay timeline: no task recorded",
            y_range=FactorRange(factors=list(reversed(rows))),
            x_axis_label="seconds since the first task started",
            height=120 + 30 * len(rows),
            sizing_mode="stretch_width",
            tools="xpan,xwheel_zoom,box_zoom,reset,save",
        )
        records = bars.records
        source = ColumnDataSource(
            {
                "row": [bars.rows[i] for i in bars.row_of],
                "left": bars.left,
                "right": [a + d for a, d in zip(bars.left, bars.duration, strict=True)],
                "duration_ms": [d * 1e3 for d in bars.duration],
                "call": [r.call_id for r in records],
                "backend": [r.backend for r in records],
                "task": [r.task for r in records],
                "function": [r.function for r in records],
                "worker": [bars.rows[i] for i in bars.row_of],
                "status": [r.status for r in records],
                "color": [bars.colors[r.function] for r in records],
                "outline": bars.outlines(),
                "hatch": ["x" if r.status != "ok" else " " for r in records],
                "line_width": [2 if r.status != "ok" else 1 for r in records],
            }
        )
        glyph = plot.hbar(
            y="row",
            left="left",
            right="right",
            height=0.8,
            fill_color="color",
            line_color="outline",
            line_width="line_width",
            hatch_pattern="hatch",
            hatch_color=_ERROR_COLOR,
            legend_field="function",
            source=source,
            name="tasks",
        )
        plot.add_tools(
            HoverTool(
                renderers=[glyph],
                tooltips=[
                    ("call", "@call (@backend)"),
                    ("task", "@task"),
                    ("function", "@function"),
                    ("worker", "@worker"),
                    ("start", "@left{0.000000} s"),
                    ("duration", "@duration_ms{0.000} ms"),
                    ("status", "@status"),
                ],
            )
        )
        plot.legend.click_policy = "mute"
        plot.add_layout(plot.legend[0], "right")
        return column(plot, Div(text=self._insights_html()), sizing_mode="stretch_width")

    def _insights_html(self) -> str:
        head = "".join(
            f"<th>{h}</th>"
            for h in ("call", "worker", "tasks", "computing", "moving data", "waiting")
        )
        body = []
        for r in self.insights():
            cells = "".join(f"<td>{seconds(s)} ({r.share(s):.0%})</td>" for s in _parts(r))
            body.append(
                f"<tr><td>{r.call_id} ({html.escape(r.backend)})</td>"
                f"<td>{html.escape(r.worker)}</td><td>{r.n_tasks}</td>{cells}</tr>"
            )
        return (
            "<h3>How each worker spent each call</h3>"
            '<table class="parlay-insights" border="1" cellpadding="4" '
            'style="border-collapse: collapse">'
            f"<tr>{head}</tr>{''.join(body)}</table>"
        )


class _Bars:
    """Records laid out for a picture: a row a worker, times from the first start."""

    def __init__(self, records: list[TaskRecord]) -> None:
        here = host_name()
        self.records = records
        self.rows: list[str] = []
        index: dict[tuple[str, int, str], int] = {}
        self.row_of: list[int] = []
        for r in records:  # sorted by start: rows in order of their first task
            key = (r.host, r.pid, r.thread)
            if key not in index:
                index[key] = len(self.rows)
                self.rows.append(r.worker if r.host == here else f"{r.host} {r.worker}")
            self.row_of.append(index[key])
        t0 = records[0].start if records else 0.0
        self.left = [r.start - t0 for r in records]
        self.duration = [r.end - r.start for r in records]
        self.colors: dict[str, str] = {}
        for r in records:
            if r.function not in self.colors:
                self.colors[r.function] = PALETTE[len(self.colors) % len(PALETTE)]

    def outlines(self) -> list[str]:
        """A bar's outline: red for a failed task; white between bars wide enough to show a
        gap, the bar's own colour for the others (a bar of a few microseconds would
        otherwise draw as a white line, or not at all)."""
        span = max((a + d for a, d in zip(self.left, self.duration, strict=True)), default=0.0)
        return [
            _ERROR_COLOR
            if r.status != "ok"
            else ("white" if d > span / 200 else self.colors[r.function])
            for r, d in zip(self.records, self.duration, strict=True)
        ]


@dataclass(slots=True)
class _Tally:
    """What one worker did in one call, summed over its batches."""

    call: CallInfo
    worker: str
    first: float
    n_tasks: int = 0
    computing: float = 0.0
    moving_data: float = 0.0


def _task_records(call: CallInfo, batch: BatchReport) -> list[TaskRecord]:
    # Tasks timed one by one, or tiny ones spread evenly over their batch's computing.
    return batch.tasks(call)


def seconds(value: float) -> str:
    """A duration for people: ``"1.23 s"``, ``"45.6 ms"``, ``"789 µs"``."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _parts(row: WorkerInsight) -> tuple[float, float, float]:
    return row.computing, row.moving_data, row.waiting


def _call_title(record: CallRecord, rows: list[WorkerInsight]) -> str:
    call = record.call
    n_tasks = sum(r.n_tasks for r in rows)
    span = rows[0].span if rows else (record.duration or 0.0)
    title = (
        f"call {call.call_id}: {call.backend}, {call.n_workers} workers, "
        f"{n_tasks} tasks, {seconds(span)}"
    )
    notes = []
    if call.via != "parlay":
        notes.append(f"via {call.via}")
    if call.nesting_level:
        notes.append(f"nesting level {call.nesting_level}")
    if len(rows) < call.n_workers:
        notes.append(f"{len(rows)} of {call.n_workers} workers ran tasks")
    if record.error is not None:
        notes.append(f"failed: {type(record.error).__name__}")
    if record.end is None:
        notes.append("still running")
    return title + (f" ({'; '.join(notes)})" if notes else "")


@contextlib.contextmanager
def timeline() -> Iterator[Timeline]:
    """Record every task of every parallel call made in the block.

    Yields a :class:`Timeline`, attached to the block's calls as
    ``parallel_config(instruments=[tl])`` would: parlay's calls on every backend,
    nested calls on threads, and joblib (scikit-learn) calls through parlay's bridge.
    The timeline keeps its records after the block.

    Examples
    --------
    >>> import parlay
    >>> with parlay.timeline() as tl:
    ...     _ = parlay.Parallel(n_jobs=2, backend="threads")(
    ...         parlay.delayed(abs)(-i) for i in range(4)
    ...     )
    >>> len(tl.records)
    4
    >>> print(tl.summary().splitlines()[0])  # doctest: +ELLIPSIS
    call ...: threads, 2 workers, 4 tasks, ...

    See Also
    --------
    Timeline.save : an interactive page (.html) or a picture (.png, .svg, .pdf).
    Timeline.summary : how each worker spent each call, as text.
    """
    recorder = Timeline()
    with parallel_config(instruments=[recorder]):
        yield recorder
