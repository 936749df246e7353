"""Instruments: objects that receive the events of parallel calls.

An instrument overrides the hooks it needs; every hook of :class:`Instrument` is an
optional no-op, and the runner calls only the hooks an instrument overrides, so an
unused hook costs nothing. A hook that raises is detached from the call and logged with
its traceback: an instrument never breaks a run.

Tasks run in batches; the runner reports each batch once it is back in the caller, as a
:class:`BatchReport`: where it ran (host, pid, thread), when it was sent, started and
was received, how long it computed and how long the worker spent unpickling it. Per-task
times cost a clock read a task in the worker, so workers take them only for calls with
an instrument that sets ``task_times = True`` (the timeline does), and only for tasks
measured at 20 µs or more; :meth:`BatchReport.tasks` gives one :class:`TaskRecord` a
task either way.

Shipped: :class:`ProgressBar` (``Parallel(progress=True)``), which counts *completed*
tasks, on every backend and with ``n_jobs=1`` too; ``parlay.timeline()``
(``_timeline``), which records every task.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NamedTuple

__all__ = ["BatchReport", "CallInfo", "Instrument", "ProgressBar", "RichProgressBar", "TaskRecord"]

logger = logging.getLogger(__name__)

HOOKS: Final = ("call_started", "batch_finished", "call_finished")

_call_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What an instrument is told about a call when it starts.

    Attributes
    ----------
    backend : str
        The backend the call runs on.
    n_workers : int
        How many batches run at once.
    n_tasks : int or None
        The number of tasks, when the iterable has a length.
    nesting_level : int
        0 for a call made at top level.
    call_id : int
        A number unique to the call in this process.
    started : float
        When the call started (``time.time()``).
    via : str
        ``"parlay"``, or ``"joblib"`` for a joblib (scikit-learn) call run through the bridge.
    """

    backend: str
    n_workers: int
    n_tasks: int | None
    nesting_level: int
    call_id: int = field(default_factory=lambda: next(_call_ids))
    started: float = field(default_factory=time.time)
    via: str = "parlay"


class TaskRecord(NamedTuple):
    """One task as it ran: a row of a timeline. Times are ``time.time()`` seconds."""

    call_id: int
    backend: str
    task: int  # the task's index in its call
    function: str
    worker: str
    host: str
    pid: int
    thread: str
    submitted: float
    start: float
    end: float
    status: str  # "ok", "error"

    @property
    def duration(self) -> float:
        """Seconds the task ran."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class BatchReport:
    """A batch of consecutive tasks back from its worker.

    Attributes
    ----------
    first : int
        The call-wide index of the batch's first task.
    n_tasks : int
        How many of its tasks ran (all, unless one failed and the call stops on errors).
    functions : tuple of str
        The qualified name of each task's function, or one name shared by all.
    worker, host, pid, thread : str, str, int, str
        Where the batch ran (``worker`` is the label used in messages).
    submitted, received : float
        When the caller sent the batch and got its result (``time.time()``).
    elapsed : float
        Seconds the worker spent running the tasks.
    load_seconds : float
        Seconds a worker process spent unpickling the batch (its arguments included).
    errors : frozenset of int
        Offsets in the batch of the tasks that raised.
    stamps : tuple of float or None
        With ``task_times``: when the first task started, then when each task ended.
        Tasks measured shorter than 20 µs are not timed one by one (two clock reads
        would cost a sizeable share of them): their batch's stamps are None.
    started : float
        When the batch's first task started (``time.time()``).
    """

    first: int
    n_tasks: int
    functions: tuple[str, ...]
    worker: str
    host: str
    pid: int
    thread: str
    submitted: float
    received: float
    elapsed: float
    load_seconds: float = 0.0
    errors: frozenset[int] = frozenset()
    stamps: tuple[float, ...] | None = None
    started: float = 0.0

    def tasks(self, call: CallInfo) -> list[TaskRecord]:
        """One record a task.

        Times are measured per task where the batch has ``stamps``; otherwise the batch's
        computing time is spread evenly over its tasks.
        """
        stamps = self.stamps
        if stamps is None:
            step = self.elapsed / max(self.n_tasks, 1)
            stamps = tuple(self.started + step * i for i in range(self.n_tasks + 1))
        shared = self.functions[0] if len(self.functions) == 1 else None
        records = []
        for offset in range(min(self.n_tasks, len(stamps) - 1)):
            function = shared if shared is not None else self.functions[offset]
            status = "error" if offset in self.errors else "ok"
            task = (call.call_id, call.backend, self.first + offset, function)
            where = (self.worker, self.host, self.pid, self.thread)
            times = (self.submitted, stamps[offset], stamps[offset + 1])
            records.append(TaskRecord(*task, *where, *times, status))
        return records


class Instrument:
    """Base class of instruments; override any of the hooks.

    Set the class attribute ``task_times = True`` to have workers time each task
    (see :meth:`BatchReport.tasks`).
    """

    task_times: ClassVar[bool] = False

    def call_started(self, call: CallInfo) -> None:
        """A call starts (before its first batch is sent)."""

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        """A batch of ``batch.n_tasks`` tasks came back from its worker."""

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        """The call ended, normally (`error` is None) or not."""


class Dispatcher:
    """Sends each event to the instruments that override its hook; detaches failing ones."""

    __slots__ = ("_by_hook", "active", "task_times")

    def __init__(self, instruments: list[Instrument]) -> None:
        self._by_hook: dict[str, list[Instrument]] = {
            hook: [
                i for i in instruments if getattr(type(i), hook) is not getattr(Instrument, hook)
            ]
            for hook in HOOKS
        }
        self.active = any(self._by_hook.values())
        self.task_times = any(i.task_times for i in self._by_hook["batch_finished"])

    def wants(self, hook: str) -> bool:
        """Whether some instrument listens to `hook`."""
        return bool(self._by_hook[hook])

    def emit(self, hook: str, *args: Any) -> None:
        """Call `hook` on every instrument that has it; a failing one is detached."""
        for instrument in list(self._by_hook[hook]):
            try:
                getattr(instrument, hook)(*args)
            except Exception:
                logger.exception(
                    "instrument %r failed in %s and was detached from the call", instrument, hook
                )
                for listeners in self._by_hook.values():
                    if instrument in listeners:
                        listeners.remove(instrument)


def _bar_label(call: CallInfo) -> str:
    """A progress bar's label: the backend, indented by nesting level, marked if joblib's."""
    label = call.backend if call.via == "parlay" else f"{call.backend} (joblib)"
    return "  " * call.nesting_level + label


class CallLog(Instrument):
    """``verbose``: a line at INFO on the ``parlay`` logger when each call ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[int, int] = {}

    def call_started(self, call: CallInfo) -> None:
        with self._lock:
            self._done[call.call_id] = 0

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        with self._lock:
            self._done[call.call_id] = self._done.get(call.call_id, 0) + batch.n_tasks

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        with self._lock:
            done = self._done.pop(call.call_id, 0)
        outcome = "done" if error is None else f"failed ({type(error).__name__})"
        logging.getLogger("parlay").info(
            "Parallel %s: %d tasks on %r with %d workers in %.3f s",
            outcome,
            done,
            call.backend,
            call.n_workers,
            time.time() - call.started,
        )


class ProgressBar(Instrument):
    """A progress bar of completed tasks (tqdm; ``tqdm.auto`` picks a notebook widget).

    A nested call (inside a task on threads) draws its own bar below its parent's, and
    removes it when it ends; tqdm keeps concurrent bars on lines of their own.
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:
            raise ImportError(
                'progress=True needs tqdm, which is not installed: pip install "parlay[progress]"'
            ) from exc
        self._tqdm = tqdm
        self._kwargs = tqdm_kwargs
        self._bars: dict[int, Any] = {}

    def call_started(self, call: CallInfo) -> None:
        options: dict[str, Any] = {
            "total": call.n_tasks,
            "unit": "task",
            "desc": _bar_label(call),
            "leave": call.nesting_level == 0,
        }
        options.update(self._kwargs)
        self._bars[call.call_id] = self._tqdm(**options)

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        bar = self._bars.get(call.call_id)
        if bar is not None:
            bar.update(batch.n_tasks)

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        bar = self._bars.pop(call.call_id, None)
        if bar is not None:
            bar.close()


class RichProgressBar(Instrument):
    """Progress of completed tasks drawn with rich (``progress="rich"``).

    rich allows one live display at a time, so every call of the process shares one: the
    first call to start opens it, each call adds a row (nested calls below their parent,
    removed when they end), and the last call to end closes it.
    """

    _lock: ClassVar = threading.Lock()
    _display: ClassVar[Any] = None
    _users: ClassVar[int] = 0

    def __init__(self) -> None:
        try:
            import rich.progress  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                'progress="rich" needs rich, which is not installed: pip install "parlay[rich]"'
            ) from exc
        self._rows: dict[int, Any] = {}

    @classmethod
    def _open(cls) -> Any:
        from rich import progress

        if cls._display is None:
            cls._display = progress.Progress(
                progress.TextColumn("{task.description}"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TimeElapsedColumn(),
                progress.TimeRemainingColumn(),
            )
            cls._display.start()
        cls._users += 1
        return cls._display

    def call_started(self, call: CallInfo) -> None:
        with self._lock:
            display = self._open()
            self._rows[call.call_id] = display.add_task(_bar_label(call), total=call.n_tasks)

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        row = self._rows.get(call.call_id)
        if row is not None and self._display is not None:
            self._display.advance(row, batch.n_tasks)

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        cls = type(self)
        with self._lock:
            row = self._rows.pop(call.call_id, None)
            if row is None or cls._display is None:
                return
            if call.nesting_level:
                cls._display.remove_task(row)
            cls._users -= 1
            if cls._users == 0:
                cls._display.stop()
                cls._display = None
