"""The errors parlay raises, in one hierarchy.

::

    Exception
     ├── ParlayError                  the pool or the call failed, not the task
     │    ├── WorkerDiedError         a worker process died: exit code or signal, which tasks
     │    ├── TaskTimeoutError        a batch ran past `timeout`; also a built-in TimeoutError
     │    ├── SerializationError      a task, argument or result could not be (un)pickled
     │    ├── BackendUnavailableError the engine of a backend is not installed
     │    └── InternalError           a state that cannot happen: please report it
     └── RemoteTraceback              the worker-side traceback, set as ``__cause__``

A task's own exception is never wrapped: it is re-raised with its own type, a note
names the task (``add_note``) and, where the task ran in another process, the worker's
formatted traceback is attached as its ``__cause__`` (a :class:`RemoteTraceback`), as
:mod:`concurrent.futures` does.

Engine errors (loky's ``TerminatedWorkerError``, dask's ``KilledWorker``, ...) are
mapped into this hierarchy at the edge of each backend with ``raise ... from exc``, so
the original stays on the chain and the core only ever sees parlay's classes.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "InternalError",
    "ParlayError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerDiedError",
]


class ParlayError(Exception):
    """Base class of the errors that come from parlay rather than from a task."""


class WorkerDiedError(ParlayError):
    """A worker died while running tasks (crash, ``os._exit``, a signal, out of memory).

    The session that lost the worker recovers on its own: the next call works.

    Attributes
    ----------
    tasks : tuple of int
        Indices of the tasks that were running or queued on the pool when it died.
    exit_codes : str or None
        The exit codes or signals the engine reported, as it wrote them.
    """

    def __init__(self, message: str, *, tasks: tuple[int, ...] = (), exit_codes: str | None = None):
        super().__init__(message)
        self.tasks = tasks
        self.exit_codes = exit_codes


class TaskTimeoutError(ParlayError, TimeoutError):
    """A task (or the batch holding it) ran longer than ``timeout`` seconds.

    It is also a built-in :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    The stuck work has been cancelled, and killed where the backend can kill it.

    Attributes
    ----------
    tasks : tuple of int
        Indices of the tasks of the batch that ran out of time.
    timeout : float
        The limit, in seconds.
    """

    def __init__(self, message: str, *, tasks: tuple[int, ...] = (), timeout: float = 0.0):
        super().__init__(message)
        self.tasks = tasks
        self.timeout = timeout


class SerializationError(ParlayError):
    """A task, one of its arguments or its result could not be pickled or unpickled.

    The message names the task and the stage (sending or receiving); the pickling
    error itself is the ``__cause__``.
    """


class BackendUnavailableError(ParlayError, ImportError):
    """The engine behind a backend is not installed; the message names the extra."""


class InternalError(ParlayError):
    """A state that should be impossible. Please report it with the traceback."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, as text.

    Set as the ``__cause__`` of the re-raised task exception, so that the default
    traceback display shows where the task failed in the worker.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
