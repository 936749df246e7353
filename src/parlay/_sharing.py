"""Large arguments: sent to the engine once per call, referenced by every task that uses them.

When a batch is pickled for another process, each NumPy array of at least ``max_nbytes``
bytes (wherever it sits in the arguments: a list, a dict, an object's state) is left out
of the payload through the pickler's ``reducer_override`` hook, which pickle calls for
arrays but not for ints, strings, tuples or lists (``persistent_id``, called for every
object, cost a Python call per int of a batch of tiny tasks). The session puts the array
into the engine once per call (``client.scatter`` on Dask, ``ray.put`` on Ray) and passes
the handles beside the payload; the engine hands the worker the values, and the payload
refers to them by position (:func:`_shared_value`).

The per-call store (:class:`CallShares`) keeps each array and its handle alive for the
whole call, keyed by identity, so an array used by 32 tasks travels once, and an array
changed in place between two calls travels again with the second.

Smaller arrays (from ``REPEAT_NBYTES`` up to ``max_nbytes``) go inside the payload of the
first batch that carries them, and are left out like large ones from the second batch
on: a call whose every batch carries the same 800 KB array (scikit-learn's forests pass
X, as float32, to every tree) sends it once, while an array that only one batch uses
never pays for a shared copy.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import mmap
import os
import pickle
import sys
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

__all__ = ["CallShares", "SegmentRef", "dumps_sharing", "loads_shared"]


# Arrays from this size up to max_nbytes are left out of a payload once an earlier batch
# of the call carried them (see the module's docstring).
REPEAT_NBYTES: Final = 64 << 10


@dataclass(eq=False)
class CallShares:
    """Large arguments already put into the engine for one call."""

    max_nbytes: int
    # Where local copies go (the call's temp_folder); None: /dev/shm.
    folder: str | None = None
    handles: dict[int, tuple[object, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Arrays of REPEAT_NBYTES to max_nbytes already sent inside a batch's payload, by id:
    # weakly held, so that arrays each used by one batch are not kept for the whole call.
    seen: weakref.WeakValueDictionary[int, Any] = field(default_factory=weakref.WeakValueDictionary)

    def clear(self, *, recycle: bool = False) -> None:
        """Drop every handle: the engine may free the data; shared segments are removed,
        or with `recycle` (the call ended with no task running and no worker holding a
        view of a copy) kept a moment for the next call's copy of the same size."""
        with self.lock:
            handles = [handle for _, handle in self.handles.values()]
            self.handles.clear()
            self.seen.clear()
        for handle in handles:
            if isinstance(handle, CallCopy):
                handle.release(recycle=recycle)


def _is_large(obj: object, max_nbytes: int) -> bool:
    # Exactly numpy.ndarray (not a subclass: a masked array or a matrix carries more than
    # its buffer), holding plain values (not Python objects, which must be pickled).
    cls = type(obj)
    if cls.__name__ != "ndarray" or cls.__module__ != "numpy":
        return False
    return bool(obj.nbytes >= max_nbytes and not obj.dtype.hasobject)  # type: ignore[attr-defined]


@functools.cache
def _pickler_class() -> type:
    import cloudpickle

    class SharingPickler(cloudpickle.Pickler):  # type: ignore[misc]
        """cloudpickle's pickler that leaves large arrays out, as references to handles."""

        def __init__(
            self,
            file: io.BytesIO,
            shares: CallShares,
            put: Callable[[object], Any],
            local: bool,
        ):
            super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
            self.shares = shares
            self.put = put
            self.local = local
            self.used: list[Any] = []
            self.positions: dict[int, int] = {}
            self.inline: set[int] = set()  # arrays this payload carries itself

        def reducer_override(self, obj: Any) -> Any:
            if type(obj).__name__ in _ARRAY_TYPES:
                if self.local and type(obj).__name__ == "memmap":
                    reopen = memmap_reopener(obj)
                    if reopen is not None:
                        return reopen
                position = self._left_out(obj)
                if position is not None:
                    return _shared_value, (position,)
            return super().reducer_override(obj)

        def _left_out(self, value: Any) -> int | None:
            """The handle position of an array sent apart, or None to pickle it here."""
            shared = sys.modules.get("parlay._shared")  # loaded by parlay.share()
            if shared is not None and isinstance(value, shared.SharedArray):
                if self.local:
                    # Workers on this machine map the user's segment: nothing is copied.
                    return self._position(value, value.ref)
                plain = value.view(_numpy().ndarray)
                return self._position(value, lambda: self.put(plain))
            if not _is_large(value, REPEAT_NBYTES):
                return None
            if value.nbytes < self.shares.max_nbytes and not self._repeated(value):
                return None
            return self._position(value, lambda: self.put(value))

        def _repeated(self, value: object) -> bool:
            """Whether an earlier batch of the call carried `value` in its payload."""
            key = id(value)
            if key in self.inline:
                return False  # this payload has it already: pickle's memo refers to it
            with self.shares.lock:
                if key in self.shares.handles or self.shares.seen.get(key) is value:
                    return True
                self.shares.seen[key] = value
            self.inline.add(key)
            return False

        def _position(self, value: object, make: Callable[[], Any]) -> int:
            key = id(value)
            if key not in self.positions:
                with self.shares.lock:
                    if key not in self.shares.handles:
                        self.shares.handles[key] = (value, make())
                    handle = self.shares.handles[key][1]
                self.positions[key] = len(self.used)
                self.used.append(handle)
            return self.positions[key]

    return SharingPickler


# The names of the array types the sharing pickler looks at (numpy's and parlay.share's).
_ARRAY_TYPES: Final = frozenset({"ndarray", "SharedArray", "memmap"})


def memmap_reopener(array: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """How a worker on this machine opens the file of a ``numpy.memmap`` (or a view of one)
    again, so that its writes reach the file, as joblib does; None to pickle a copy.

    joblib documents writing results into a memmap the caller made (``mode="w+"``); a
    pickled copy would drop those writes without a word. The worker maps the same bytes
    of the same file in the same mode (``"w+"`` becomes ``"r+"``: the file exists now).
    Views with negative strides are copied.
    """
    np = _numpy()
    base = getattr(array, "_mmap", None)
    filename = getattr(array, "filename", None)
    if base is None or filename is None or not array.size or min(array.strides) < 0:
        return None
    mapped = np.frombuffer(base, dtype=np.uint8)
    start = array.__array_interface__["data"][0] - mapped.__array_interface__["data"][0]
    # numpy maps from the offset rounded down to the allocation granularity.
    file_start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY + start
    mode = "r+" if array.mode == "w+" else array.mode
    last = sum((n - 1) * stride for n, stride in zip(array.shape, array.strides, strict=True))
    span = last + array.itemsize  # bytes from the first element to the end of the last
    order = "C" if array.flags.c_contiguous else "F" if array.flags.f_contiguous else None
    layout = (array.shape, array.strides, order)
    return _open_memmap, (filename, array.dtype, mode, file_start, span, layout)


def _open_memmap(
    filename: str, dtype: Any, mode: str, start: int, span: int, layout: tuple[Any, ...]
) -> Any:
    """In the worker: the caller's memmap (see :func:`memmap_reopener`)."""
    np = _numpy()
    shape, strides, order = layout
    if order is not None:
        return np.memmap(filename, dtype=dtype, mode=mode, offset=start, shape=shape, order=order)
    raw = np.memmap(filename, dtype=np.uint8, mode=mode, offset=start, shape=(span,))
    return np.ndarray(shape, dtype, buffer=raw, strides=strides)


def dumps_sharing(
    obj: object, shares: CallShares, put: Callable[[object], Any], *, local: bool = False
) -> tuple[bytes, list[Any]]:
    """Pickle `obj` with its large arrays left out; return the payload and their handles.

    With ``local=True`` (the workers run on this machine) arrays made by
    :func:`parlay.share` travel as references to their segments, never copied.
    """
    buffer = io.BytesIO()
    pickler = _pickler_class()(buffer, shares, put, local)
    token = _FOLDER.set(shares.folder)
    try:
        pickler.dump(obj)
    finally:
        _FOLDER.reset(token)
    return buffer.getvalue(), pickler.used


# The values of the handles of the payload being unpickled in this thread.
_VALUES: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("parlay_shared_values")


def _shared_value(position: int) -> Any:
    """In the worker: the value of the payload's handle at `position` (see dumps_sharing)."""
    return _VALUES.get()[position]


def loads_shared(payload: bytes, values: tuple[Any, ...]) -> Any:
    """Unpickle a payload from :func:`dumps_sharing`, given the values of its handles.

    The values are reachable only while the payload is unpickled (a context variable,
    reset at once): nothing keeps a worker's mapping of a 400 MB segment alive after the
    tasks that use it.
    """
    token = _VALUES.set(values)
    try:
        return pickle.loads(payload)
    finally:
        _VALUES.reset(token)


# -- shared memory on this machine ----------------------------------------------------------

_SHM_DIR: Final = "/dev/shm"

# The folder of the call being pickled (its temp_folder), for the local copies it makes.
_FOLDER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "parlay_temp_folder", default=None
)


def _segment_folder(nbytes: int, folder: str | None = None) -> str:
    """`folder` (else /dev/shm) when it has room for `nbytes`, else the temp folder."""
    folder = folder or _FOLDER.get() or _SHM_DIR
    try:
        stats = os.statvfs(folder)
    except OSError:
        return tempfile.gettempdir()
    free = stats.f_bavail * stats.f_frsize
    if free < nbytes * 1.1:
        hint = " (docker run --shm-size=...)" if folder == _SHM_DIR else ""
        warnings.warn(
            f"{folder} has {free / 2**20:.0f} MiB free, too little for a {nbytes / 2**20:.0f} "
            f"MiB argument: parlay shares it through a file in {tempfile.gettempdir()} instead "
            f"(slower). Give {folder} more room{hint} or choose another temp_folder.",
            ResourceWarning,
            stacklevel=5,
        )
        return tempfile.gettempdir()
    return folder


def _attach(path: str, shape: tuple[int, ...], dtype: str, order: Literal["C", "F"]) -> Any:
    """In a worker: map a shared array without copying it (copy-on-write if written)."""
    import numpy as np

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        # ACCESS_COPY: a private mapping. Reads share the caller's pages; a task that
        # writes into its argument gets its own copy of the pages it writes, as it would
        # with a pickled copy, and never a read-only error.
        buffer = _huge(mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY))
    finally:
        os.close(fd)
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, order=order)


class SharedRef(NamedTuple):
    """What a :class:`SharedArray` becomes in a worker: where to map the array from.

    It stays a small reference until :func:`resolve` maps it, inside parlay's worker
    code: an engine that inspects task arguments (Dask walks them) never sees 400 MB.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    order: Literal["C", "F"]

    def attach(self) -> Any:
        """Map the array (no copy)."""
        return _attach(self.path, self.shape, self.dtype, self.order)


def resolve(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """In a worker: map the shared references among `values`, leave the rest."""
    return tuple(v.attach() if isinstance(v, SharedRef | SegmentRef) else v for v in values)


def mappings_of_copies(refs: tuple[Any, ...], values: tuple[Any, ...]) -> list[Any]:
    """In a worker: weak references to the mappings :func:`resolve` made for per-call
    copies (not ``parlay.share`` segments, which stay mapped), for :func:`unmapped`."""
    return [
        weakref.ref(value.base)
        for ref, value in zip(refs, values, strict=True)
        if isinstance(ref, SharedRef) and isinstance(value.base, mmap.mmap)
    ]


def unmapped(mappings: list[Any]) -> bool:
    """In a worker, once a batch's arguments are dropped: whether every mapping is gone.

    One still alive means something holds a view of a task's argument (a task kept it in
    a global, a result refers to it): the caller must not write another call's data into
    that segment. (Closing the mapping instead would leave such a view dangling: NumPy
    keeps no buffer export on it.)
    """
    return all(mapping() is None for mapping in mappings)


class CallCopy:
    """A NumPy array copied once into shared memory; pickles as a small :class:`SharedRef`.

    The caller's side owns the segment and removes it in :meth:`release`.
    """

    __slots__ = ("_folder", "_mapping", "dtype", "nbytes", "order", "path", "shape")

    def __init__(self, array: Any) -> None:
        self.shape = tuple(array.shape)
        self.dtype = array.dtype.str
        self.nbytes = int(array.nbytes)
        fortran = array.flags.f_contiguous and not array.flags.c_contiguous
        self.order: Literal["C", "F"] = "F" if fortran else "C"
        self._mapping: mmap.mmap | None = None
        self._folder = _FOLDER.get()
        spare = _take_spare(self._folder, self.nbytes)
        if spare is None:
            # New pages: let go of the spares first, so that /dev/shm holds one copy.
            _discard_spares()
        self.path, fd = spare if spare is not None else _new_segment(self.nbytes)
        try:
            if array.flags.c_contiguous or array.flags.f_contiguous:
                _write(fd, array.T if self.order == "F" else array)
            else:
                self._copy_through_mapping(fd, array)
        except BaseException:
            self.release()
            raise
        finally:
            os.close(fd)

    def _copy_through_mapping(self, fd: int, array: Any) -> None:
        import numpy as np

        self._mapping = _populated_mapping(fd, array.nbytes)
        target = np.ndarray(self.shape, dtype=array.dtype, buffer=self._mapping, order=self.order)
        np.copyto(target, array, casting="no")
        del target

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedRef, (self.path, self.shape, self.dtype, self.order))

    def release(self, *, recycle: bool = False) -> None:
        """Remove the segment; workers that mapped it keep their mapping until they drop it.

        With `recycle`, a large segment is kept instead, for the next copy of the same
        size (see ``_keep_spare``): no task uses it any more and no worker holds a view of
        it, so writing another call's data into it changes nothing anyone sees.

        The name goes at once. The pages go when the last descriptor or mapping of the
        file closes, and freeing them takes time (54 ms for 400 MB here, a fifth of W4's
        call on processes): for a large copy, a descriptor opened just before the unlink
        (and this side's mapping, if any) holds them past it, and a short-lived thread
        closes it after the call has returned. No descriptor is held during the call (a
        call may pass a thousand arrays), and if this process dies its descriptors close
        with it: nothing can be left behind.
        """
        mapping, self._mapping = self._mapping, None
        if recycle and self.nbytes >= _RECYCLE_BYTES:
            if mapping is not None:
                with contextlib.suppress(BufferError, ValueError):
                    mapping.close()
            _keep_spare(self._folder, self.nbytes, self.path)
            return
        if self.nbytes < _CLOSE_LATER_BYTES:
            _remove(self.path, mapping)
            return
        _remove_and_free_later(self.path, mapping)


def _remove_and_free_later(path: str, mapping: mmap.mmap | None) -> None:
    """Remove `path` now, and free its pages in the background (see CallCopy.release)."""
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
    _remove(path, None)
    _close_later(fd, mapping)


# Copies from this size are closed (their pages freed) off the caller's thread.
_CLOSE_LATER_BYTES: Final = 16 << 20

# -- spare segments -------------------------------------------------------------------------
# A call's copy of a large argument costs new pages: writing 400 MB into a new file took
# 175 ms here against 90 ms into the pages of an existing one, and freeing them another
# 55 ms. Calls that pass an array of the same size again (a loop over calls) reuse the
# last call's segment, once no worker holds a view of it. A spare that no call takes
# within _SPARE_SECONDS is freed, and shutdown() frees them all.
_RECYCLE_BYTES: Final = 16 << 20
_SPARE_SECONDS: Final = 1.0
_SPARES: dict[tuple[str | None, int], list[tuple[str, threading.Timer]]] = {}
_SPARES_LOCK = threading.Lock()


def _keep_spare(folder: str | None, nbytes: int, path: str) -> None:
    timer = threading.Timer(_SPARE_SECONDS, _expire_spare, (folder, nbytes, path, True))
    timer.name = "parlay-spare-segment"
    timer.daemon = True
    with _SPARES_LOCK:
        _SPARES.setdefault((folder, nbytes), []).append((path, timer))
    try:
        timer.start()
    except RuntimeError:  # the interpreter is shutting down
        _expire_spare(folder, nbytes, path)


def _take_spare(folder: str | None, nbytes: int) -> tuple[str, int] | None:
    """A kept segment of `nbytes` and a descriptor open on it, or None."""
    while True:
        with _SPARES_LOCK:
            spares = _SPARES.get((folder, nbytes))
            if not spares:
                return None
            path, timer = spares.pop()
        timer.cancel()
        try:
            return path, os.open(path, os.O_RDWR)
        except OSError:
            _remove(path, None)  # removed under us (or unreadable): try the next


def _expire_spare(folder: str | None, nbytes: int, path: str, in_timer: bool = False) -> None:
    with _SPARES_LOCK:
        spares = _SPARES.get((folder, nbytes), [])
        kept = [(p, t) for p, t in spares if p != path]
        if len(kept) == len(spares):
            return  # taken by a call meanwhile
        _SPARES[(folder, nbytes)] = kept
    if in_timer:
        # Freed in this thread, which a new segment waits for (see _wait_for_frees).
        with _FREEING_LOCK:
            _FREEING.append(threading.current_thread())
    _remove(path, None)


def _take_all_spares() -> list[tuple[str, threading.Timer]]:
    """Every kept segment, out of the pool, its timer cancelled."""
    with _SPARES_LOCK:
        spares = [entry for entries in _SPARES.values() for entry in entries]
        _SPARES.clear()
    for _, timer in spares:
        timer.cancel()
    return spares


def _discard_spares() -> None:
    """Remove every kept segment, its pages freed in the background (which the next new
    segment waits for)."""
    for path, _ in _take_all_spares():
        _remove_and_free_later(path, None)


def free_spares() -> None:
    """Remove every kept segment now (``parlay.shutdown()``)."""
    for path, timer in _take_all_spares():
        if timer.is_alive():
            timer.join()
        _remove(path, None)


# The threads freeing copies; a new segment waits for them (see _new_segment).
_FREEING: list[threading.Thread] = []
_FREEING_LOCK = threading.Lock()


def _close_later(fd: int | None, mapping: mmap.mmap | None) -> None:
    """Close `fd` and `mapping` in a thread of their own, freeing the pages they hold."""

    def close() -> None:
        if mapping is not None:
            with contextlib.suppress(BufferError, ValueError):
                mapping.close()
        if fd is not None:
            os.close(fd)

    thread = threading.Thread(target=close, name="parlay-free-segment", daemon=True)
    try:
        thread.start()  # not under the lock: a collection here may release a copy too
    except RuntimeError:
        close()  # the interpreter is shutting down
        return
    with _FREEING_LOCK:
        _FREEING.append(thread)


def _wait_for_frees() -> None:
    """Let the copies being freed go before another segment is made.

    A call's copy is freed after the call returns; the next call's copy, made while the
    last one's pages were still held, took /dev/shm to 1.38x the array's size in
    back-to-back calls (400 MB array, sampled every 0.5 ms), and could push a tight
    /dev/shm onto the temp-folder fallback. Waiting keeps the peak at one copy.
    """
    with _FREEING_LOCK:
        threads = list(_FREEING)
    for thread in threads:
        thread.join()
    with _FREEING_LOCK:
        _FREEING[:] = [thread for thread in _FREEING if thread.is_alive()]


def _new_segment(nbytes: int, folder: str | None = None) -> tuple[str, int]:
    """Create a file of `nbytes` for a shared array, tracked for removal if this process
    dies: its path, and a descriptor open for reading and writing (the caller closes it)."""
    _wait_for_frees()
    folder = _segment_folder(nbytes, folder)
    path = os.path.join(folder, f"parlay-{os.getpid()}-{uuid.uuid4().hex[:16]}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _track(path)
        os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        _remove(path, None)
        raise
    return path, fd


def _populated_mapping(fd: int, nbytes: int, *, writable: bool = True) -> mmap.mmap:
    # MAP_POPULATE (Linux) faults the pages in at once, a third faster than one fault
    # per page during a copy. nbytes=0 maps the whole file.
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return _huge(mmap.mmap(fd, nbytes, flags=flags, prot=prot))


def _huge(mapping: mmap.mmap) -> mmap.mmap:
    """Ask for huge pages, which a tmpfs mounted with ``huge=advise`` then gives.

    Reading through 4 KiB pages is slower than through NumPy's own (transparent huge
    page) arrays: summing 400 MB took 40 ms against 24 ms here.
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and len(mapping):
        with contextlib.suppress(OSError):
            mapping.madvise(advice)
    return mapping


# Bytes a write() call copies at once: large enough to cost one system call per 64 MiB,
# small enough for the kernel to take without a second buffer.
_WRITE_CHUNK: Final = 64 << 20


def _write(fd: int, array: Any) -> None:
    """Write a C-contiguous array's bytes to `fd`: measured here, 40% faster than copying
    into a populated mapping (127 ms against 223 ms for 400 MB)."""
    data = memoryview(array).cast("B")
    for offset in range(0, len(data), _WRITE_CHUNK):
        chunk = data[offset : offset + _WRITE_CHUNK]
        written = 0
        while written < len(chunk):
            written += os.pwrite(fd, chunk[written:], offset + written)


def _track(path: str) -> None:
    # loky's resource tracker removes the file if this process dies before release().
    from loky.backend import resource_tracker

    resource_tracker.register(path, "file")


def _untrack(path: str) -> None:
    from loky.backend import resource_tracker

    with contextlib.suppress(Exception):
        resource_tracker.unregister(path, "file")


def share_locally(value: object) -> CallCopy:
    """The ``put`` of engines whose workers run on this machine."""
    return CallCopy(value)


# -- parlay.share: arrays that live in shared memory -----------------------------------------


def _numpy() -> Any:
    import numpy

    return numpy


class _Segment:
    """A file in /dev/shm (or the temp folder) mapped read-write in the process that made it.

    Removed when the last array using it is collected, and by loky's resource tracker if
    this process dies first.
    """

    __slots__ = ("__weakref__", "address", "mapping", "nbytes", "path")

    def __init__(self, nbytes: int, folder: str | None = None) -> None:
        self.nbytes = nbytes
        self.path, fd = _new_segment(max(nbytes, 1), folder)
        try:
            self.mapping = _populated_mapping(fd, max(nbytes, 1))
        except BaseException:
            _remove(self.path, None)
            raise
        finally:
            os.close(fd)
        probe = _numpy().frombuffer(self.mapping, dtype="u1", count=1)
        self.address: int = probe.__array_interface__["data"][0]
        del probe
        weakref.finalize(self, _remove, self.path, self.mapping)


def _remove(path: str, mapping: mmap.mmap | None) -> None:
    if mapping is not None:
        with contextlib.suppress(BufferError, ValueError):
            mapping.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _untrack(path)


class SegmentRef(NamedTuple):
    """What a :class:`SharedArray` (or a view of it) becomes in a worker on this machine."""

    path: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    writable: bool

    def attach(self) -> Any:
        """Map the segment (once per worker process) and view the array in it."""
        np = _numpy()
        mapping = _mapped(self.path, self.writable)
        array = np.ndarray(
            self.shape, dtype=np.dtype(self.dtype), buffer=mapping, offset=self.offset,
            strides=self.strides,
        )  # fmt: skip
        if not self.writable:
            array.flags.writeable = False
        return array


# Worker side: segments this process mapped, by (path, writable). A segment is mapped
# once and reused by every later batch and call, its pages faulted in at once when it is
# mapped (MAP_POPULATE): W4s on processes 1.45x -> 1.28x the threads time, where tasks
# faulted the pages of their slices in call after call until each worker had seen them all.
_MAPPED: dict[tuple[str, bool], mmap.mmap] = {}
_MAPPED_LOCK = threading.Lock()


def _mapped(path: str, writable: bool) -> mmap.mmap:
    with _MAPPED_LOCK:
        # Forget segments their owner removed; arrays still using one keep it mapped.
        for key in [k for k in _MAPPED if not os.path.exists(k[0])]:
            del _MAPPED[key]
        mapping = _MAPPED.get((path, writable))
        if mapping is None:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
            try:
                mapping = _populated_mapping(fd, 0, writable=writable)
            finally:
                os.close(fd)
            _MAPPED[(path, writable)] = mapping
        return mapping
