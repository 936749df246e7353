"""Large arguments: sent to the engine once per call, referenced by every task that uses them.

When a batch is pickled for another process, each NumPy array of at least ``max_nbytes``
bytes (wherever it sits in the arguments: a list, a dict, an object's state) is left out
of the payload through pickle's ``persistent_id`` hook. The session puts it into the
engine once per call (``client.scatter`` on Dask, ``ray.put`` on Ray) and passes the
handles beside the payload; the engine hands the worker the values, and the worker's
unpickler puts them back in place through ``persistent_load``.

The per-call store (:class:`CallShares`) keeps each array and its handle alive for the
whole call, keyed by identity, so an array used by 32 tasks travels once, and an array
changed in place between two calls travels again with the second.
"""

from __future__ import annotations

import functools
import io
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["CallShares", "dumps_sharing", "loads_shared"]

# Argument types that never hold a large array: a batch of only these skips the slower
# pickler with a persistent_id hook (a Python call per pickled object).
_PLAIN: Final = frozenset({int, float, complex, bool, str, type(None)})


@dataclass(eq=False)
class CallShares:
    """Large arguments already put into the engine for one call."""

    max_nbytes: int
    handles: dict[int, tuple[object, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        """Drop every handle: the engine may free the data."""
        with self.lock:
            self.handles.clear()


def _is_large(obj: object, max_nbytes: int) -> bool:
    nbytes = getattr(obj, "nbytes", None)
    if nbytes is None or type(obj).__module__ != "numpy" or type(obj).__name__ != "ndarray":
        return False
    return bool(nbytes >= max_nbytes)


def needs_sharing_pass(args: list[tuple[Any, ...]], kwargs: list[dict[str, Any]]) -> bool:
    """Whether any argument could hold a large array (anything but plain scalars)."""
    for task_args in args:
        for value in task_args:
            if type(value) not in _PLAIN:
                return True
    return any(kwargs)


@functools.cache
def _pickler_class() -> type:
    import cloudpickle

    class SharingPickler(cloudpickle.Pickler):  # type: ignore[misc]
        """cloudpickle's pickler that leaves large arrays out, as persistent ids."""

        def __init__(self, file: io.BytesIO, shares: CallShares, put: Callable[[object], Any]):
            super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
            self.shares = shares
            self.put = put
            self.used: list[Any] = []
            self.positions: dict[int, int] = {}

        def persistent_id(self, value: object) -> int | None:
            if not _is_large(value, self.shares.max_nbytes):
                return None
            key = id(value)
            if key not in self.positions:
                with self.shares.lock:
                    if key not in self.shares.handles:
                        self.shares.handles[key] = (value, self.put(value))
                    handle = self.shares.handles[key][1]
                self.positions[key] = len(self.used)
                self.used.append(handle)
            return self.positions[key]

    return SharingPickler


def dumps_sharing(
    obj: object, shares: CallShares, put: Callable[[object], Any]
) -> tuple[bytes, list[Any]]:
    """Pickle `obj` with its large arrays left out; return the payload and their handles."""
    buffer = io.BytesIO()
    pickler = _pickler_class()(buffer, shares, put)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.used


def loads_shared(payload: bytes, values: tuple[Any, ...]) -> Any:
    """Unpickle a payload from :func:`dumps_sharing`, given the values of its handles."""

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return values[pid]

    return _Unpickler(io.BytesIO(payload)).load()
