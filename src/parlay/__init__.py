"""parlay: negotiated parallelism.

The user says what resources there are (``parallel_config``); the algorithm's author says
what the tasks need (``prefer``, ``require``); parlay decides where each call runs, runs it,
and can say why (``Parallel(...).explain()``).

Layers, each building only on those above it::

    _exceptions, _budget          errors; cores, n_jobs arithmetic, the nesting budget
    _config                       parallel_config, PARLAY_* environment, precedence
    _backends._base, _worker      the backend contract; what runs around each batch
    _backends                     registry (by name, loaded lazily) and the session cache
    _negotiate                    decide(): pure, returns a Decision with its reasons
    _batching, _runner            batch sizes; the dispatch loop of one call
    _instrument, _timeline        events of calls; progress bars, the task-stream timeline
    _api                          Parallel, delayed: the front door
"""

from typing import Any as _Any

from ._api import Parallel as Parallel
from ._api import Task as Task
from ._api import delayed as delayed
from ._api import effective_n_jobs as effective_n_jobs
from ._api import explain_last as explain_last
from ._backends import register_backend as register_backend
from ._backends import shutdown as shutdown
from ._backends._base import Backend as Backend
from ._backends._base import Capabilities as Capabilities
from ._backends._base import Session as Session
from ._budget import cpu_count as cpu_count
from ._config import parallel_config as parallel_config
from ._exceptions import BackendUnavailableError as BackendUnavailableError
from ._exceptions import InternalError as InternalError
from ._exceptions import ParlayError as ParlayError
from ._exceptions import RemoteTraceback as RemoteTraceback
from ._exceptions import SerializationError as SerializationError
from ._exceptions import TaskTimeoutError as TaskTimeoutError
from ._exceptions import WorkerDiedError as WorkerDiedError
from ._instrument import BatchReport as BatchReport
from ._instrument import CallInfo as CallInfo
from ._instrument import Instrument as Instrument
from ._instrument import TaskRecord as TaskRecord
from ._negotiate import Decision as Decision
from ._timeline import CallRecord as CallRecord
from ._timeline import Timeline as Timeline
from ._timeline import WorkerInsight as WorkerInsight
from ._timeline import timeline as timeline
from ._worker import Batch as Batch
from ._worker import BatchResult as BatchResult

__version__ = "0.1.0.dev0"


def share(array: _Any, *, writable: bool = False, temp_folder: _Any = None) -> _Any:
    """Copy `array` once into shared memory; pass the result to tasks instead of `array`.

    Parameters
    ----------
    array : array_like
        The data (anything ``numpy.asarray`` takes, of a dtype without Python objects).
    writable : bool, default=False
        Whether tasks in worker processes may write into it. Writes are then shared: the
        caller and every task see them (mind races between tasks). Without it, tasks get
        a read-only view; the caller can always write, and tasks of later calls see it.
    temp_folder : path, optional
        The folder of the segment: default, the ``temp_folder`` of the enclosing
        :func:`parallel_config`, else ``PARLAY_TEMP_FOLDER``, else ``/dev/shm``. It must be
        on a memory file system (tmpfs) for speed; one mounted with ``huge=within_size``
        gives the array huge pages, which tasks read faster.

    Returns
    -------
    SharedArray
        An ``ndarray`` in a shared-memory segment, freed when it and all its views are
        collected (and by a resource tracker if the process dies).

    Examples
    --------
    >>> import numpy as np, parlay
    >>> data = parlay.share(np.arange(6.0))          # one copy, in shared memory
    >>> sums = parlay.Parallel(n_jobs=2, backend="processes")(
    ...     parlay.delayed(np.sum)(data[i::2]) for i in range(2)
    ... )                                             # tasks get views, not copies
    >>> [float(s) for s in sums]
    [6.0, 9.0]
    >>> data[:] = 1.0                                 # changed in place: never stale
    >>> [float(s) for s in parlay.Parallel(n_jobs=2, backend="processes")(
    ...     parlay.delayed(np.sum)(data[i::2]) for i in range(2))]
    [3.0, 3.0]
    """
    from ._shared import share as _share  # here: `import parlay` does not import NumPy

    return _share(array, writable=writable, temp_folder=temp_folder)


def __getattr__(name: str) -> _Any:
    if name == "SharedArray":
        from ._shared import SharedArray

        return SharedArray
    raise AttributeError(f"module 'parlay' has no attribute {name!r}")


__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Batch",
    "BatchReport",
    "BatchResult",
    "CallInfo",
    "CallRecord",
    "Capabilities",
    "Decision",
    "Instrument",
    "InternalError",
    "Parallel",
    "ParlayError",
    "RemoteTraceback",
    "SerializationError",
    "Session",
    "Task",
    "TaskRecord",
    "TaskTimeoutError",
    "Timeline",
    "WorkerDiedError",
    "WorkerInsight",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "explain_last",
    "parallel_config",
    "register_backend",
    "share",
    "shutdown",
    "timeline",
]

for _name in __all__:
    _obj = globals()[_name]
    try:
        _obj.__module__ = __name__
    except (AttributeError, TypeError):  # pragma: no cover - builtins cannot be renamed
        pass
del _name, _obj
