"""What tasks print and log in worker processes, brought back to the caller.

A worker process's ``sys.stdout`` goes to a terminal the user may not be looking at (a
notebook shows only its kernel's own streams), and its logging has no handlers, so a
task's ``print`` and ``logger.info`` vanish or land unprefixed. While a batch runs in a
worker process, :func:`capturing` routes what the batch's thread (and threads started
from its context) writes to ``sys.stdout`` / ``sys.stderr`` and logs into a
:class:`Captured`, which travels back with the batch's result; :func:`replay` writes
it to the caller's own streams and loggers, each line prefixed with the worker.

Routing is by context variable, so a Dask worker running batches of several calls on
several threads keeps them apart, and output from anywhere else in the worker (the
engine's own threads) goes where it went before. Output reaches the caller when the
batch ends (a batch aims at a fraction of a second), not line by line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Final, TextIO

__all__ = ["Captured", "caller_log_level", "capturing", "replay"]

# The attributes of a log record that travel (all plain values: they always pickle).
_RECORD_FIELDS: Final = (
    "name", "levelno", "levelname", "pathname", "filename", "module", "lineno", "funcName",
    "created", "msecs", "process", "processName", "thread", "threadName", "stack_info",
)  # fmt: skip


class Captured:
    """The output of one batch: stdout and stderr pieces, and log records as dicts."""

    __slots__ = ("closed", "err", "level", "logs", "out")

    def __init__(self, level: int = logging.WARNING) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.logs: list[dict[str, Any]] = []
        self.level = level
        # Set when the batch ends: a thread it started that outlives it writes through.
        self.closed = False

    def stdout(self) -> str:
        return "".join(self.out)

    def stderr(self) -> str:
        return "".join(self.err)


_current: ContextVar[Captured | None] = ContextVar("parlay_captured", default=None)


def _active() -> Captured | None:
    captured = _current.get()
    return None if captured is None or captured.closed else captured


class _Routed:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: a capturing batch's writes go to it."""

    def __init__(self, original: TextIO, stderr: bool) -> None:
        self._original = original
        self._stderr = stderr

    def write(self, text: str) -> int:
        captured = _active()
        if captured is None:
            return self._original.write(text)
        (captured.err if self._stderr else captured.out).append(str(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _active() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self._original, name)


class _Handler(logging.Handler):
    """On the worker's root logger: keeps the records of capturing batches."""

    def emit(self, record: logging.LogRecord) -> None:
        captured = _active()
        if captured is None:
            # Outside a batch: where the record would have gone without this handler (a
            # root logger with no other handler prints warnings through lastResort).
            others = [h for h in logging.getLogger().handlers if h is not self]
            last = logging.lastResort
            if not others and last is not None and record.levelno >= last.level:
                last.handle(record)
            return
        if record.levelno < captured.level:
            return
        try:
            message = record.getMessage()
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = logging.Formatter().formatException(record.exc_info)
        except Exception:
            self.handleError(record)
            return
        fields = {name: getattr(record, name, None) for name in _RECORD_FIELDS}
        fields.update(msg=message, args=None, exc_text=exc_text)
        captured.logs.append(fields)


_handler = _Handler()


def _install() -> None:
    if not isinstance(sys.stdout, _Routed) and sys.stdout is not None:
        sys.stdout = _Routed(sys.stdout, stderr=False)
    if not isinstance(sys.stderr, _Routed) and sys.stderr is not None:
        sys.stderr = _Routed(sys.stderr, stderr=True)
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)


@contextlib.contextmanager
def capturing(captured: Captured | None) -> Iterator[None]:
    """Route this context's output into `captured` (``None``: leave output alone)."""
    if captured is None:
        yield
        return
    _install()
    root = logging.getLogger()
    if captured.level < root.level:
        # Let the records the caller wants reach the handler. Lowered, never raised
        # back: other batches may run on other threads of this process.
        root.setLevel(captured.level)
    token = _current.set(captured)
    try:
        yield
    finally:
        captured.closed = True
        _current.reset(token)


def caller_log_level() -> int:
    """The lowest level any logger of the caller lets through: what a worker must keep."""
    level = logging.getLogger().getEffectiveLevel()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level and logger.level < level:
            level = logger.level
    return level


def _prefixed(text: str, prefix: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(prefix + line for line in lines)


def replay(label: str, stdout: str, stderr: str, logs: list[dict[str, Any]]) -> None:
    """In the caller: write a batch's output to this process's streams and loggers."""
    prefix = f"[{label}] "
    if stdout and sys.stdout is not None:
        sys.stdout.write(_prefixed(stdout, prefix))
        if not stdout.endswith("\n"):
            sys.stdout.write("\n")
    if stderr and sys.stderr is not None:
        sys.stderr.write(_prefixed(stderr, prefix))
        if not stderr.endswith("\n"):
            sys.stderr.write("\n")
    for fields in logs:
        logger = logging.getLogger(fields["name"])
        if logger.isEnabledFor(fields["levelno"]):
            record = logging.makeLogRecord(fields)
            record.msg = prefix + str(record.msg)
            logger.handle(record)
