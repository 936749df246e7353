"""parlay.share: arrays in shared memory, passed by reference, on every backend."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import parlay
from parlay import Parallel, delayed

# Workers that map the caller's segment instead of receiving a copy.
MAPPING = {"processes", "dask", "ray"}


def total(array: np.ndarray) -> float:
    return float(array.sum())


def mapped_paths(_: int) -> list[str]:
    """The parlay segments this worker process has mapped."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "/parlay-" in line})


def first_row_sum_and_maps(array: np.ndarray) -> tuple[float, list[str], bool]:
    return float(array[0].sum()), mapped_paths(0), bool(array.flags.writeable)


def fill(array: np.ndarray, row: int, value: float) -> int:
    array[row] = value
    return os.getpid()


def try_to_write(array: np.ndarray) -> str:
    try:
        array[0] = -1.0
    except ValueError as exc:
        return str(exc)
    return "written"


def segment_of(shared: np.ndarray) -> str:
    segment = shared._segment  # type: ignore[attr-defined]
    assert segment is not None
    return str(segment.path)


def test_tasks_see_the_shared_array_and_its_changes(backend: str) -> None:
    data = parlay.share(np.arange(40_000, dtype=np.float64).reshape(200, 200))
    rows = [data[i] for i in range(0, 200, 20)]
    expected = [float(r.sum()) for r in rows]
    assert Parallel(n_jobs=2, backend=backend)(delayed(total)(r) for r in rows) == expected
    # Changed in place between calls: the next call sees the change (one copy only).
    data[:] = 1.0
    again = Parallel(n_jobs=2, backend=backend)(delayed(total)(data[i]) for i in range(0, 200, 20))
    assert again == [200.0] * 10
    # Views of every kind: strided, transposed, Fortran-ordered.
    views = [data[::3, 1::2], data.T, np.asfortranarray(data)]
    assert Parallel(n_jobs=2, backend=backend)(delayed(total)(v) for v in views) == [
        float(v.sum()) for v in views
    ]


def test_workers_map_the_callers_segment(backend: str) -> None:
    if backend not in MAPPING:
        pytest.skip("threads and inline tasks use the caller's array itself")
    data = parlay.share(np.ones((64, 1024)))
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(first_row_sum_and_maps)(data) for _ in range(4)
    )
    path = segment_of(data)
    for row_sum, maps, writeable in out:
        assert row_sum == 1024.0
        assert path in maps, f"the worker did not map {path}: {maps}"
        assert not writeable, "shared without writable=True: tasks get a read-only view"


def test_a_shared_array_is_sent_as_a_reference_of_a_few_bytes() -> None:
    from parlay._budget import current_nesting
    from parlay._sharing import CallShares, SegmentRef, share_locally
    from parlay._worker import WorkerContext, batch_of

    data = parlay.share(np.zeros(10_000_000))  # 80 MB
    batch = batch_of(
        0, [total] * 4, [(data[i::4],) for i in range(4)], [None] * 4,
        WorkerContext(current_nesting()), True, None, CallShares(1 << 20),
    )  # fmt: skip
    payload, handles = batch.pack_sharing(share_locally, local=True)
    assert len(payload) < 5_000
    assert len(handles) == 4
    assert all(isinstance(h, SegmentRef) and h.path == segment_of(data) for h in handles)


def test_writable_shared_arrays_take_the_tasks_writes(backend: str) -> None:
    data = parlay.share(np.zeros((8, 1000)), writable=True)
    pids = Parallel(n_jobs=2, backend=backend)(delayed(fill)(data, i, i + 1.0) for i in range(8))
    assert [float(v) for v in data[:, 0]] == [i + 1.0 for i in range(8)]
    if backend in MAPPING:
        assert os.getpid() not in pids  # written from other processes, seen here


def test_read_only_in_worker_processes_unless_writable(backend: str) -> None:
    if backend not in MAPPING:
        pytest.skip("threads share the caller's own (writable) array")
    data = parlay.share(np.zeros(1000))
    [message] = Parallel(n_jobs=1, backend=backend, timeout=60)([delayed(try_to_write)(data)])
    assert "read-only" in message
    assert data[0] == 0.0


def test_arithmetic_results_are_ordinary_arrays() -> None:
    data = parlay.share(np.arange(10.0))
    doubled = data * 2
    assert type(doubled) is np.ndarray
    assert isinstance(data[2:5], parlay.SharedArray)
    assert float(data.sum()) == 45.0
    # Pickled by anyone else, it is a plain array with the same values.
    import pickle

    copy = pickle.loads(pickle.dumps(data[2:5]))
    assert type(copy) is np.ndarray
    assert copy.tolist() == [2.0, 3.0, 4.0]


def test_the_segment_is_removed_when_the_array_and_its_views_are_collected() -> None:
    data = parlay.share(np.ones(1000))
    view = data[10:20]
    path = segment_of(data)
    assert os.path.exists(path)
    del data
    gc.collect()
    assert os.path.exists(path), "a view still uses it"
    assert float(view.sum()) == 10.0
    del view
    gc.collect()
    assert not os.path.exists(path)


@pytest.mark.timeout(60)
def test_the_segment_is_removed_when_the_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        import numpy as np
        import parlay
        data = parlay.share(np.ones(1_000_000))
        print(data._segment.path, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        path = child.stdout.readline().strip()
        assert os.path.exists(path)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 20
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(path), "the resource tracker did not remove the segment"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_bad_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="writable must be True or False"):
        parlay.share(np.ones(3), writable="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Python objects"):
        parlay.share(np.array([object()]))


def test_import_parlay_does_not_import_numpy() -> None:
    code = "import sys, parlay; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_full_dev_shm_falls_back_to_the_temp_folder_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """/dev/shm cannot be shrunk from a test: its free space is reported as nearly none."""
    import tempfile

    from parlay import _sharing

    real_statvfs = os.statvfs

    class Full:
        f_bavail = 1
        f_frsize = 4096

    monkeypatch.setattr(
        _sharing.os, "statvfs", lambda p: Full() if p == _sharing._SHM_DIR else real_statvfs(p)
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    array = np.arange(1_000_000, dtype=np.float64)  # 8 MB: shared per call
    with pytest.warns(ResourceWarning, match="too little"):
        out = Parallel(n_jobs=2, backend="processes")(delayed(total)(array[i::4]) for i in range(4))
    assert out == [float(array[i::4].sum()) for i in range(4)]
    assert list(tmp_path.iterdir()) == [], "the fallback file was not removed"
    with pytest.warns(ResourceWarning, match="too little"):
        shared = parlay.share(array)
    assert segment_of(shared).startswith(str(tmp_path))
    assert (
        Parallel(n_jobs=2, backend="processes")(delayed(total)(shared) for _ in range(2))
        == [float(array.sum())] * 2
    )
    del shared
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def frame_total(frame: object) -> float:
    return float(np.asarray(frame).sum())


def test_arrays_inside_pandas_objects_are_shared_once_per_call(backend: str) -> None:
    pd = pytest.importorskip("pandas")
    from parlay._budget import current_nesting
    from parlay._sharing import CallShares, share_locally
    from parlay._worker import WorkerContext, batch_of

    values = np.arange(2_000_000, dtype=np.float64).reshape(-1, 4)
    frame = pd.DataFrame(values, columns=list("abcd"))
    shares = CallShares(1 << 20)
    batch = batch_of(
        0, [frame_total] * 2, [(frame,), (frame["a"],)], [None] * 2,
        WorkerContext(current_nesting()), True, None, shares,
    )  # fmt: skip
    payload, handles = batch.pack_sharing(share_locally, local=True)
    shares.clear()
    assert len(payload) < 10_000, "the frame's 16 MB went into the pickle"
    assert len(handles) == 2
    out = Parallel(n_jobs=2, backend=backend)(
        [delayed(frame_total)(frame), delayed(frame_total)(frame["a"])]
    )
    assert out == [float(frame.to_numpy().sum()), float(frame["a"].sum())]


def total_and_pid(array: np.ndarray, pause: float = 0.0) -> tuple[float, int]:
    time.sleep(pause)
    return float(array.sum()), os.getpid()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shared", [True, False], ids=["share", "per-call copy"])
def test_workers_that_map_a_large_array_are_not_restarted(shared: bool) -> None:
    # loky restarts a worker whose resident size grew 300 MB after its first task; mapped
    # shared memory is not the worker's own and must not count.
    call = Parallel(n_jobs=2, backend="processes", batch_size=1)
    # Until both workers have taken tasks (one may start late on a busy machine).
    first: set[int] = set()
    for _ in range(10):
        first |= {pid for _, pid in call(delayed(total_and_pid)(np.ones(4), 0.2) for _ in range(4))}
        if len(first) == 2:
            break
    assert len(first) == 2, first
    array = np.ones(48_000_000)  # 384 MB
    data = parlay.share(array) if shared else array
    seen: set[int] = set()
    for _ in range(3):
        time.sleep(1.2)  # loky checks a worker's memory at most once a second
        out = call(delayed(total_and_pid)(data) for _ in range(4))
        assert [value for value, _ in out] == [48_000_000.0] * 4
        seen |= {pid for _, pid in out}
    assert seen <= first, f"workers were replaced: {sorted(first)} then {sorted(seen)}"


def segments_in(folder: str, _: object = None) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("parlay-"))


def test_temp_folder_holds_the_calls_copies_and_shared_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    array = np.arange(300_000, dtype=np.float64)  # 2.4 MB: copied once for the call
    folder = str(tmp_path)
    out = Parallel(n_jobs=2, backend="processes", temp_folder=tmp_path)(
        delayed(segments_in)(folder, array) for _ in range(3)
    )
    assert all(len(seen) == 1 for seen in out), out
    assert segments_in(folder) == [], "the call's copy was not removed"

    assert segment_of(parlay.share(array, temp_folder=tmp_path)).startswith(folder)
    with parlay.parallel_config(temp_folder=tmp_path):
        assert segment_of(parlay.share(array)).startswith(folder)
        seen = Parallel(n_jobs=2, backend="processes")(
            delayed(segments_in)(folder, array) for _ in range(2)
        )
        assert all(seen), "parallel_config(temp_folder=) did not reach the call"
    monkeypatch.setenv("PARLAY_TEMP_FOLDER", folder)
    assert segment_of(parlay.share(array)).startswith(folder)
    gc.collect()
    assert segments_in(folder) == []


def test_joblib_calls_use_their_temp_folder(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    array = np.arange(300_000, dtype=np.float64)
    with parlay.parallel_config(backend="processes"):
        out = joblib.Parallel(n_jobs=2, temp_folder=str(tmp_path))(
            joblib.delayed(segments_in)(str(tmp_path), array) for _ in range(3)
        )
    assert all(len(seen) == 1 for seen in out), out
    assert segments_in(str(tmp_path)) == []


def test_bad_temp_folders_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="temp_folder must be None or a path"):
        Parallel(temp_folder=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temp_folder must be an existing folder"):
        Parallel(temp_folder=tmp_path / "missing")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temp_folder must be an existing folder"):
        parlay.parallel_config(temp_folder=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="temp_folder must be an existing folder"):
        parlay.share(np.ones(3), temp_folder=tmp_path / "missing")
    monkeypatch.setenv("PARLAY_TEMP_FOLDER", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="PARLAY_TEMP_FOLDER"):
        parlay.share(np.ones(3))


# -- numpy.memmap: joblib's "write the results into a memmap" pattern ---------------------


def write_at(out: np.ndarray, index: int) -> bool:
    out[index] = index + 1
    return isinstance(out, np.memmap)


def try_write(array: np.ndarray) -> str:
    try:
        array[0] = 1
    except ValueError as exc:
        return str(exc)
    return "written"


def test_workers_write_into_the_callers_memmap(backend: str, tmp_path: Path) -> None:
    out = np.memmap(tmp_path / "out.mmap", dtype="float64", shape=(6,), mode="w+")
    kinds = Parallel(n_jobs=2, backend=backend)(delayed(write_at)(out, i) for i in range(6))
    np.testing.assert_array_equal(out, np.arange(1, 7))
    assert all(kinds), "a worker did not get a memmap"


def test_memmap_views_and_modes_travel_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "grid.mmap"
    grid = np.memmap(path, dtype="int32", shape=(4, 6), mode="w+", offset=24)
    grid[:] = np.arange(24).reshape(4, 6)
    grid.flush()
    # A strided view of the columns: the worker writes through it into the file.
    columns = grid[1:, ::2]
    Parallel(n_jobs=2, backend="processes")(delayed(np.negative)(columns, out=columns) for _ in [0])
    expected = np.arange(24).reshape(4, 6)
    expected[1:, ::2] *= -1
    np.testing.assert_array_equal(np.memmap(path, dtype="int32", shape=(4, 6), offset=24), expected)
    # Opened read-only by the caller, read-only in the worker too (as joblib).
    reader = np.memmap(path, dtype="int32", shape=(4, 6), mode="r", offset=24)
    (message,) = Parallel(n_jobs=2, backend="processes")([delayed(try_write)(reader)])
    assert "read-only" in message
