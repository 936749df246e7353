"""``parlay.share``: NumPy arrays that live in shared memory, passed to workers by reference.

An array made by :func:`share` sits in a segment of ``/dev/shm`` mapped by the caller.
Process workers and the workers of a cluster on this machine map the same segment (once
per worker process, kept for later calls), so a call passes a few bytes of reference, and
an array changed in place between calls is seen changed: there is only one copy. Workers
on other machines get it once per call (``scatter``, ``ray.put``), like any large argument.

This module imports NumPy; ``import parlay`` does not import it until ``share`` is used.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import _config
from ._sharing import SegmentRef, _Segment

__all__ = ["SharedArray", "share"]


class SharedArray(np.ndarray):
    """A NumPy array in shared memory (made by :func:`parlay.share`); views are shared too.

    It behaves as any ``ndarray`` in the caller. In tasks on process and local cluster
    workers it arrives as a plain ``ndarray`` over the same memory: read-only, or
    writable if it was shared with ``writable=True``, in which case what tasks write
    is seen by the caller and by every other task.
    """

    _segment: _Segment | None
    _writable: bool

    def __array_finalize__(self, obj: Any) -> None:
        # Views and slices keep the segment alive and remember how it was shared.
        self._segment = getattr(obj, "_segment", None)
        self._writable = getattr(obj, "_writable", False)

    def ref(self) -> SegmentRef | Any:
        """The reference a worker on this machine maps (a copy if not in a segment)."""
        segment = self._segment
        if segment is None or not self.nbytes:
            return self.view(np.ndarray).copy()
        offset = self.__array_interface__["data"][0] - segment.address
        if not 0 <= offset <= segment.nbytes:  # a result of arithmetic, not a view
            return self.view(np.ndarray).copy()
        return SegmentRef(
            segment.path, offset, self.shape, self.strides, self.dtype.str, self._writable
        )

    def __reduce__(self) -> Any:
        # Pickled any other way (by the user, by an engine), it is a plain array.
        return self.view(np.ndarray).__reduce__()

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # Results of arithmetic live in ordinary memory: plain arrays, not SharedArrays.
        result = super().__array_wrap__(array, context, return_scalar)
        if isinstance(result, SharedArray) and not np.may_share_memory(result, self):
            return result.view(np.ndarray)
        return result


def share(array: Any, *, writable: bool = False, temp_folder: Any = None) -> SharedArray:
    """Copy `array` into shared memory (the body of :func:`parlay.share`)."""
    if not isinstance(writable, bool):
        raise TypeError(f"writable must be True or False, got {writable!r}")
    explicit = _config.check_temp_folder(temp_folder)
    folder = _config.resolve("temp_folder", _config.UNSET if explicit is None else explicit, None)
    source = np.asarray(array)
    if source.dtype.hasobject:
        raise TypeError(
            f"share() needs an array of plain values; dtype {source.dtype} holds Python "
            "objects, which cannot live in shared memory"
        )
    segment = _Segment(source.nbytes, folder.value)
    fortran = source.flags.f_contiguous and not source.flags.c_contiguous
    order: Literal["C", "F"] = "F" if fortran else "C"
    shared = np.ndarray(source.shape, dtype=source.dtype, buffer=segment.mapping, order=order)
    shared[...] = source
    result = shared.view(SharedArray)
    result._segment = segment
    result._writable = writable
    return result
