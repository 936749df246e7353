"""Instruments: objects that receive the events of parallel calls.

An instrument overrides the hooks it needs; every hook of :class:`Instrument` is an
optional no-op, and the runner calls only the hooks an instrument overrides, so an
unused hook costs nothing. A hook that raises is detached from the call and logged with
its traceback: an instrument never breaks a run.

Shipped: :class:`ProgressBar` (``Parallel(progress=True)``), which counts *completed*
tasks, on every backend and with ``n_jobs=1`` too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CallInfo", "Instrument", "ProgressBar"]

logger = logging.getLogger(__name__)

HOOKS: Final = ("call_started", "batch_finished", "call_finished")


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
    """

    backend: str
    n_workers: int
    n_tasks: int | None
    nesting_level: int


class Instrument:
    """Base class of instruments; override any of the hooks."""

    def call_started(self, call: CallInfo) -> None:
        """A call starts (before its first batch is sent)."""

    def batch_finished(self, call: CallInfo, n_tasks: int, worker: str, elapsed: float) -> None:
        """A batch of `n_tasks` tasks finished on `worker` after `elapsed` seconds of work."""

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        """The call ended, normally (`error` is None) or not."""


class Dispatcher:
    """Sends each event to the instruments that override its hook; detaches failing ones."""

    __slots__ = ("_by_hook", "active")

    def __init__(self, instruments: list[Instrument]) -> None:
        self._by_hook: dict[str, list[Instrument]] = {
            hook: [
                i for i in instruments if getattr(type(i), hook) is not getattr(Instrument, hook)
            ]
            for hook in HOOKS
        }
        self.active = any(self._by_hook.values())

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


class ProgressBar(Instrument):
    """A progress bar of completed tasks (tqdm; ``tqdm.auto`` picks a notebook widget).

    Only calls made at top level draw a bar: calls nested in tasks would draw from their
    workers, garbling the terminal.
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
        if call.nesting_level == 0:
            self._bars[id(call)] = self._tqdm(
                total=call.n_tasks, unit="task", desc=call.backend, **self._kwargs
            )

    def batch_finished(self, call: CallInfo, n_tasks: int, worker: str, elapsed: float) -> None:
        bar = self._bars.get(id(call))
        if bar is not None:
            bar.update(n_tasks)

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        bar = self._bars.pop(id(call), None)
        if bar is not None:
            bar.close()
