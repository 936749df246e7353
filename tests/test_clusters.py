"""Cluster engines: which cluster parlay uses, and what it starts and stops itself."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import parlay
from conftest import _wait_until
from parlay import Parallel, delayed, parallel_config
from parlay._sharing import CallShares
from parlay._worker import WorkerContext, batch_of
from parlay.testing import nested_sum, square

distributed = pytest.importorskip("distributed")


def slice_sum(array: np.ndarray, start: int, stop: int) -> float:
    return float(array[start:stop].sum())


def same_object(a: object, b: object) -> bool:
    return a is b


def worker_address(_: int) -> str:
    return str(distributed.get_worker().address)


# -- Dask: which cluster ------------------------------------------------------------------


def test_embedded_cluster_is_started_once_on_loopback_and_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PARLAY_DASK_ADDRESS", raising=False)
    from parlay._backends import dask as dask_backend

    with parallel_config(backend="dask"):
        out = Parallel(n_jobs=-1)(delayed(worker_address)(i) for i in range(8))
        first = dask_backend._embedded[0]
        again = Parallel(n_jobs=-1)(delayed(square)(i) for i in range(4))
    assert again == [0, 1, 4, 9]
    assert dask_backend._embedded == [first], "the second call started another cluster"
    assert first.address.startswith("tcp://127.0.0.1:")
    assert all(address.startswith("tcp://127.0.0.1:") for address in out)
    host = psutil.Process(first.process.pid)
    tree = [host, *host.children(recursive=True)]
    assert len(tree) >= 3, "a host process and one worker process per core"
    listening = [
        c.laddr for p in tree for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the scheduler and workers listen"
    assert all(address.ip == "127.0.0.1" for address in listening), listening
    parlay.shutdown()
    _gone, alive = psutil.wait_procs(tree, timeout=20)
    assert not alive, f"cluster processes outlived parlay.shutdown(): {alive}"
    assert dask_backend._embedded == []


def chatty(i: int) -> int:
    print("x" * 1000, flush=True)  # 100 tasks: 100 KB, more than a pipe holds
    return i


@pytest.mark.timeout(60)
def test_workers_printing_a_lot_never_block(dask_cluster: str) -> None:
    out = Parallel(n_jobs=-1, backend="dask", batch_size=1)(delayed(chatty)(i) for i in range(100))
    assert out == list(range(100))


def test_address_from_parallel_config(dask_cluster: str) -> None:
    with parallel_config(backend="dask", address=dask_cluster):
        out = Parallel(n_jobs=-1)(delayed(worker_address)(i) for i in range(6))
    assert len(set(out)) >= 1
    client = distributed.Client(dask_cluster, set_as_default=False)
    try:
        assert set(out) <= set(client.nthreads())
    finally:
        client.close()


def test_unreachable_address_fails_fast_and_names_it() -> None:
    t0 = time.monotonic()
    with (
        pytest.raises(parlay.ParlayError, match=r"tcp://127\.0\.0\.1:9"),
        parallel_config(backend="dask", address="tcp://127.0.0.1:9"),
    ):
        Parallel(n_jobs=-1)(delayed(square)(i) for i in range(3))
    assert time.monotonic() - t0 < 15


def test_the_users_current_client_is_used(dask_cluster: str) -> None:
    from parlay._backends import dask as dask_backend

    with distributed.Client(dask_cluster) as client:  # the user's default client
        out = Parallel(n_jobs=-1, backend="dask")(delayed(worker_address)(i) for i in range(4))
        assert set(out) <= set(client.nthreads())
        assert dask_backend._clients == {}, "parlay opened a client of its own"


def test_an_explicit_client(dask_cluster: str) -> None:
    client = distributed.Client(dask_cluster, set_as_default=False)
    try:
        with parallel_config(backend="dask", client=client):
            assert Parallel(n_jobs=-1)(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    finally:
        client.close()


def test_n_jobs_counts_the_clusters_threads(dask_cluster: str) -> None:
    from parlay._backends import acquire_session, backend_class

    decision = Parallel(n_jobs=-1, backend="dask").explain()
    session = acquire_session(backend_class("dask")(), decision, cached=True)
    assert session.n_workers == 2  # the session cluster: 2 workers x 1 thread
    decision = Parallel(n_jobs=1, backend="dask").explain()
    assert decision.backend == "dask", "one worker still runs on the cluster"


def test_dask_results_are_fetched_in_parlays_thread(dask_cluster: str) -> None:
    # distributed runs every future's callbacks in one thread of the process: fetching
    # results there held back the user's own callbacks, one round trip at a time.
    from parlay.testing import UNPICKLED_IN, return_thread_noting

    UNPICKLED_IN.clear()
    with parallel_config(backend="dask", address=dask_cluster):
        out = Parallel(n_jobs=2, batch_size=1)(delayed(return_thread_noting)(i) for i in range(6))
    assert out == [i for i in range(6)]
    assert UNPICKLED_IN == ["parlay-dask-fetch"] * 6, UNPICKLED_IN


def ray_task_name(i: int) -> str:
    import ray

    return str(ray.get_runtime_context().get_task_name())


def test_ray_names_the_tasks_after_their_function(ray_runtime: None) -> None:
    # What Ray's dashboard and state API show: every task was "run_packed" before.
    out = Parallel(n_jobs=2, backend="ray")(delayed(ray_task_name)(i) for i in range(4))
    assert out == ["parlay_ray_task_name"] * 4


def test_dask_groups_the_tasks_by_function(dask_cluster: str) -> None:
    # What the dashboard shows, and what Dask's duration estimates are kept by.
    Parallel(n_jobs=2, backend="dask")(delayed(slice_sum)(np.ones(10), 0, k) for k in range(4))
    with distributed.Client(dask_cluster, timeout=10) as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)
        )
    assert "parlay_slice_sum" in prefixes, prefixes


@pytest.mark.timeout(60)
def test_the_embedded_cluster_sends_a_task_when_a_thread_is_free(dask_cluster: str) -> None:
    # distributed's default queues a second task on a busy single-threaded worker, placed
    # before anyone knows which worker frees first: two large batches of a forest's fit
    # could end up one behind the other on one worker while the other ran single trees.
    # (Dask places the first tasks of a group at once, whatever the setting; the rest
    # wait at the scheduler, which is where they must stay until a thread is free.)
    with distributed.Client(dask_cluster, timeout=10) as client:
        threads = client.nthreads()
        futures = [client.submit(time.sleep, 0.4, pure=False) for _ in range(12)]
        try:
            assert _wait_until(lambda: sum(f.done() for f in futures) >= 2, 20)
            seen: dict[str, int] = {}
            for _ in range(40):
                for worker, keys in client.processing().items():
                    seen[worker] = max(seen.get(worker, 0), len(keys))
                time.sleep(0.025)
            assert all(seen.get(w, 0) <= threads[w] for w in threads), seen
            assert not all(f.done() for f in futures), "the tasks ended before the check"
        finally:
            distributed.wait(futures, timeout=20)


def test_bad_backend_parameters() -> None:
    with pytest.raises(TypeError, match="address"):
        Parallel(n_jobs=2, backend=parlay._backends.backend_class("dask")(address=3))
    with (
        pytest.raises(TypeError, match=r"unexpected keyword|takes"),
        parallel_config(backend="dask", adress="tcp://127.0.0.1:1"),
    ):
        Parallel(n_jobs=2).explain()


@pytest.mark.timeout(60)
def test_nested_calls_go_back_to_the_cluster_without_deadlock(dask_cluster: str) -> None:
    # Two workers with one thread each run the two outer tasks; each nested call submits
    # to the same cluster and waits: it must leave its worker slot while it waits.
    with parallel_config(backend="dask"):
        decision = Parallel(n_jobs=-1).explain()
        # n_jobs=2 inside a task whose budget is one core: on the cluster, not inline.
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(nested_sum)(x, 2) for x in (5, 6))
    assert decision.backend == "dask"
    assert [total for total, _, _ in out] == [30, 55]
    assert [backend for _, backend, _ in out] == ["dask", "dask"]


# -- large arguments ------------------------------------------------------------------------


def test_a_large_array_is_put_once_per_call_whatever_the_tasks() -> None:
    array = np.arange(400_000, dtype=float)  # 3.2 MB, over the 1 MiB default
    small = np.arange(10, dtype=float)
    puts: list[int] = []
    shares = CallShares(max_nbytes=1 << 20)
    context = WorkerContext(parlay._budget.current_nesting())

    def put(value: object) -> int:
        puts.append(id(value))
        return len(puts)

    sizes = []
    for start in range(0, 40, 10):
        tasks = [(slice_sum, (array, i, i + 1), {}) for i in range(start, start + 10)]
        tasks.append((slice_sum, (small, 0, 1), {"extra": [array]}))
        funcs, args, kwargs = map(list, zip(*tasks, strict=True))
        batch = batch_of(start, funcs, args, kwargs, context, True, None, shares)
        payload, handles = batch.pack_sharing(put)
        sizes.append(len(payload))
        assert handles == [1]
    assert puts == [id(array)], "the array went to the engine more than once"
    assert max(sizes) < 20_000, "the array was pickled into a payload"


def test_a_mid_sized_array_goes_inline_once_then_by_reference() -> None:
    repeated = np.arange(50_000, dtype=float)  # 400 KB: under max_nbytes, over 64 KiB
    shares = CallShares(max_nbytes=1 << 20)
    context = WorkerContext(parlay._budget.current_nesting())
    puts: list[int] = []

    def put(value: object) -> int:
        puts.append(id(value))
        return len(puts)

    def pack(*tasks: tuple[Any, ...]) -> tuple[bytes, list[Any]]:
        funcs, args, kwargs = map(list, zip(*tasks, strict=True))
        return batch_of(0, funcs, args, kwargs, context, True, None, shares).pack_sharing(put)

    # First batch: inline, once, however many tasks refer to it.
    payload, handles = pack(*[(slice_sum, (repeated, i, i + 1), {}) for i in range(5)])
    assert handles == []
    assert 400_000 < len(payload) < 420_000
    # A batch of its own per task: an array used once is never put.
    once = np.ones(50_000)
    payload, handles = pack((slice_sum, (once, 0, 1), {}))
    assert handles == []
    assert len(payload) > 400_000
    # From the second batch on, by reference.
    for _ in range(3):
        payload, handles = pack(*[(slice_sum, (repeated, i, i + 1), {}) for i in range(5)])
        assert handles == [1]
        assert len(payload) < 20_000
    assert puts == [id(repeated)]
    # Small arrays always travel inline.
    payload, handles = pack((slice_sum, (np.ones(1000), 0, 1), {}))
    assert handles == []


def test_one_task_sees_one_array_when_it_gets_it_twice(backend: str) -> None:
    array = np.arange(50_000, dtype=float)
    out = Parallel(n_jobs=2, backend=backend, batch_size=2)(
        delayed(same_object)(array, array) for _ in range(6)
    )
    assert out == [True] * 6


@pytest.mark.parametrize("engine", ["processes", "dask", "ray"])
def test_large_arguments_reach_every_task(engine: str, request: pytest.FixtureRequest) -> None:
    if engine != "processes":
        request.getfixturevalue("dask_cluster" if engine == "dask" else "ray_runtime")
    array = np.random.default_rng(0).random(1_000_000)
    bounds = [(i * 50_000, (i + 1) * 50_000) for i in range(20)]
    out = Parallel(n_jobs=-1, backend=engine)(delayed(slice_sum)(array, a, b) for a, b in bounds)
    assert out == pytest.approx([array[a:b].sum() for a, b in bounds])
    # Changed in place between calls: the next call sees the new values.
    array[:] = 1.0
    out = Parallel(n_jobs=-1, backend=engine)(delayed(slice_sum)(array, a, b) for a, b in bounds)
    assert out == [50_000.0] * 20


def test_unreachable_ray_address_fails_fast_and_names_it() -> None:
    from parlay._backends.ray import _check_reachable

    t0 = time.monotonic()
    with pytest.raises(parlay.ParlayError, match=r"127\.0\.0\.1:9"):
        _check_reachable("127.0.0.1:9")
    with pytest.raises(parlay.ParlayError, match=r"ray://127\.0\.0\.1:9"):
        _check_reachable("ray://127.0.0.1:9")
    with pytest.raises(ValueError, match="host:port"):
        _check_reachable("nowhere")
    assert time.monotonic() - t0 < 15


# -- Ray: what parlay starts ---------------------------------------------------------------

RAY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import parlay
    from parlay import Parallel, delayed
    from parlay._backends import ray as ray_backend

    out = Parallel(n_jobs=-1, backend="ray")(delayed(abs)(-i) for i in range(10))
    folder = ray_backend._started[0]
    print(json.dumps({"out": out, "folder": folder}), flush=True)
    parlay.shutdown()
    print("closed", flush=True)
    """
)


@pytest.mark.timeout(120)
def test_local_ray_started_by_parlay_is_stopped_and_its_files_removed(tmp_path: Path) -> None:
    if importlib.util.find_spec("ray") is None:  # not importorskip: importing ray sets RAY_*
        pytest.skip("ray is not installed")
    import json

    script = tmp_path / "run.py"
    script.write_text(RAY_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    info = json.loads(line)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert info["out"] == list(range(10))
    assert "closed" in out
    assert Path(info["folder"]).name.startswith("parlay-ray-")
    assert not Path(info["folder"]).exists(), "Ray's temp files were left behind"
    _gone, alive = psutil.wait_procs(descendants, timeout=20)
    assert not alive, f"Ray processes outlived the script: {alive}"


RAY_EARLY_ENDS = textwrap.dedent(
    """
    import random, sys, time
    import parlay
    from parlay import Parallel, delayed
    from parlay.testing import jittered_square, raise_at

    rng = random.Random(0)
    calls = 0
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        gen = Parallel(n_jobs=2, backend="ray", batch_size=1, return_as="generator")(
            delayed(jittered_square)(i) for i in range(100)
        )
        for _ in range(rng.randrange(1, 20)):
            next(gen)
        gen.close()
        try:
            Parallel(n_jobs=2, backend="ray", batch_size=1)(
                delayed(raise_at)(i, 5) for i in range(40)
            )
        except ValueError:
            calls += 2
    parlay.shutdown()
    print("calls", calls, flush=True)
    """
)


@pytest.mark.timeout(180)
def test_calls_ending_early_on_ray_never_crash_the_driver(tmp_path: Path) -> None:
    # A gentle ray.cancel of a task that is finishing aborts the driver in Ray's own code
    # (a RAY_CHECK in its task manager): parlay cancelled the rest of a call so when it
    # ended early, and this loop died within its first seconds every time (3 of 3).
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    script = tmp_path / "early.py"
    script.write_text(RAY_EARLY_ENDS)
    done = subprocess.run(
        [sys.executable, str(script), "8"], capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 20, done.stdout


def scribble(array: np.ndarray) -> float:
    array[:10] = -1.0  # a task may write into its argument, as into a pickled copy
    return float(array[:10].sum())


def shm_segments() -> set[str]:
    """This process's segments (other processes on the machine may have theirs)."""
    mine = f"parlay-{os.getpid()}-"
    return {name for name in os.listdir("/dev/shm") if name.startswith(mine)}


@pytest.fixture(params=["processes", "dask"])
def local_engine(request: pytest.FixtureRequest) -> str:
    """An engine whose workers run on this machine: processes, or the session's cluster."""
    if request.param == "dask":
        request.getfixturevalue("dask_cluster")
    return str(request.param)


def test_shared_arguments_are_private_copies_to_tasks_and_released(local_engine: str) -> None:
    engine = local_engine
    array = np.ones(500_000)
    out = Parallel(n_jobs=2, backend=engine)(delayed(scribble)(array) for _ in range(4))
    assert out == [-10.0] * 4
    assert array[:10].tolist() == [1.0] * 10, "a task's write reached the caller's array"
    assert shm_segments() == set()


def held_copies() -> set[str]:
    """This process's copies still holding memory: names in /dev/shm, and removed files
    whose pages a descriptor of this process still holds."""
    held = shm_segments()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"/dev/shm/parlay-{os.getpid()}-"):
                held.add(os.path.basename(target.removesuffix(" (deleted)")))
    return held


def test_the_calls_copy_is_gone_at_once_and_its_memory_soon_after() -> None:
    # After a call that failed, the name goes when the call ends; the pages, held by a
    # descriptor, soon after.
    from parlay.testing import raise_at

    array = np.ones(16_000_000)  # 128 MB: over the size freed in the background
    with pytest.raises(ValueError, match="failed on purpose"):
        Parallel(n_jobs=2, backend="processes")(
            delayed(lambda a, i: raise_at(i, 3) + slice_sum(a, i, i + 1))(array, i)
            for i in range(4)
        )
    assert shm_segments() == set()
    assert _wait_until(lambda: not held_copies(), 10), held_copies()
    # After a call that ended well, the copy is kept a moment for a next call of the
    # same size, then goes too (without shutdown).
    out = Parallel(n_jobs=2, backend="processes")(
        delayed(slice_sum)(array, k, k + 1000) for k in range(4)
    )
    assert out == [1000.0] * 4
    assert _wait_until(lambda: not held_copies(), 10), held_copies()


def test_a_call_of_the_same_size_reuses_the_last_copys_segment(local_engine: str) -> None:
    first, second = np.ones(4_000_000), np.full(4_000_000, 2.0)  # 32 MB each
    call = Parallel(n_jobs=2, backend=local_engine)
    assert call(delayed(slice_sum)(first, 0, 10) for _ in range(2)) == [10.0] * 2
    kept = shm_segments()
    assert len(kept) == 1, kept
    # The next copy goes into the same pages: its own values, no stale ones.
    assert call(delayed(slice_sum)(second, 0, 10) for _ in range(2)) == [20.0] * 2
    assert shm_segments() == kept


def test_an_unpicklable_result_of_a_task_given_a_large_array_is_named(
    local_engine: str,
) -> None:
    from parlay import SerializationError
    from parlay.testing import return_unpicklable

    array = np.ones(4_000_000)  # a per-call copy, which the worker checks after the batch
    out = Parallel(n_jobs=2, backend=local_engine, return_exceptions=True)(
        delayed(lambda a, i: return_unpicklable(i) if i == 1 else slice_sum(a, 0, 2))(array, i)
        for i in range(3)
    )
    assert out[0] == out[2] == 2.0
    assert isinstance(out[1], SerializationError), out[1]
    assert "task 1" in str(out[1])


def test_a_copy_a_task_kept_is_never_written_again(local_engine: str) -> None:
    from parlay.testing import keep_and_sum, sums_kept

    first, second = np.ones(4_000_000), np.full(4_000_000, 2.0)
    call = Parallel(n_jobs=2, backend=local_engine, batch_size=1)
    assert call(delayed(keep_and_sum)(first) for _ in range(4)) == [4e6] * 4
    # The workers report the copy still mapped: the next call gets a new segment, and
    # what the tasks kept keeps its values.
    assert call(delayed(slice_sum)(second, 0, 10) for _ in range(4)) == [20.0] * 4
    for sums in call(delayed(sums_kept)() for _ in range(8)):
        assert all(total == 4e6 for total in sums), sums


def test_back_to_back_calls_hold_one_copy_at_a_time() -> None:
    # A call's copy is freed after it returns; the next call's copy waits for that, so
    # /dev/shm never holds two (without the wait: 1.38x the array in back-to-back calls).
    array = np.ones(16_000_000)  # 128 MB
    call = Parallel(n_jobs=2, backend="processes")
    call(delayed(slice_sum)(array, k, k + 1000) for k in range(2))
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], len(held_copies()))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(4):
            call(delayed(slice_sum)(array, k, k + 1000) for k in range(2))
    finally:
        done.set()
        sampler.join()
    assert peak[0] == 1, f"{peak[0]} copies held at once"


def test_shared_segments_are_released_when_a_task_fails() -> None:
    from parlay.testing import raise_at

    array = np.ones(500_000)
    with pytest.raises(ValueError, match="failed on purpose"):
        Parallel(n_jobs=2, backend="processes")(
            delayed(lambda a, i: raise_at(i, 3))(array, i) for i in range(8)
        )
    assert shm_segments() == set()


def kill_with_array(array: np.ndarray, i: int) -> float:
    from parlay.testing import kill_self_at

    return float(array[:1].sum()) + kill_self_at(i, 3)


def test_shared_segments_are_released_when_a_worker_is_killed(
    local_engine: str, request: pytest.FixtureRequest
) -> None:
    from parlay import WorkerDiedError

    engine = local_engine
    array = np.ones(500_000)
    shared = parlay.share(np.ones(500_000))
    with pytest.raises(WorkerDiedError):
        # Two tasks kill their workers (i == 3, with each array): the second must not
        # outlive the failed call and kill a worker the next call uses.
        Parallel(n_jobs=2, backend=engine, batch_size=1)(
            delayed(kill_with_array)(a, i) for i in range(8) for a in (array, shared)
        )
    # The call's copy is gone at once; the user's shared array lives on, usable.
    assert shm_segments() == {os.path.basename(shared._segment.path)}  # type: ignore[attr-defined]
    again = Parallel(n_jobs=2, backend=engine)(delayed(np.sum)(shared[i::2]) for i in range(2))
    assert [float(x) for x in again] == [250_000.0, 250_000.0]
    del shared
    import gc

    gc.collect()
    assert shm_segments() == set()
    if engine == "dask":
        # Leave the session's cluster as found: its nanny restarts the killed worker.
        with distributed.Client(request.getfixturevalue("dask_cluster"), timeout=10) as client:
            client.wait_for_workers(2, timeout=30)


def return_then_die(delay: float) -> float:
    """Return at once, and kill this worker process `delay` seconds later."""
    import signal
    import threading

    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return delay


@pytest.mark.timeout(120)
def test_a_worker_that_dies_before_its_result_is_fetched_is_named(dask_cluster: Any) -> None:
    # The task finished, but its worker may die before the client gathers the result:
    # the gather then fails with distributed's KilledWorker, which must come out as the
    # dead worker it is. Whatever the moment of the death, the call returns the result
    # (fetched in time) or raises WorkerDiedError, and nothing else. A cluster of its
    # own: the workers it kills come back on their own time, and the session's cluster
    # must stay whole for the tests that follow.
    from parlay import WorkerDiedError
    from parlay._backends.dask import EmbeddedCluster

    cluster = EmbeddedCluster(2)
    outcomes = []
    try:
        with parallel_config(backend="dask", client=cluster.client):
            for delay in (0.0, 0.002, 0.005):
                try:
                    out = Parallel(n_jobs=1)([delayed(return_then_die)(delay)])
                except WorkerDiedError as exc:
                    outcomes.append("died" if "died" in str(exc) else f"unnamed: {exc}")
                else:
                    assert out == [delay]
                    outcomes.append("returned")
                cluster.client.wait_for_workers(2, timeout=60)
    finally:
        cluster.close()
    assert set(outcomes) <= {"died", "returned"}, outcomes
    assert "died" in outcomes, outcomes


@pytest.mark.timeout(120)
def test_the_embedded_cluster_replaces_a_nanny_that_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SpecCluster closes the nanny of a worker still absent `lost-worker-timeout` after
    # its removal. Made 50 ms here, every worker death ends its nanny while the worker
    # is starting again: the cluster must get back to its size on its own, every time.
    from parlay import WorkerDiedError
    from parlay._backends.dask import EmbeddedCluster
    from parlay.testing import kill_self_at

    monkeypatch.setenv("DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT", "50ms")
    cluster = EmbeddedCluster(2)
    try:
        with parallel_config(backend="dask", client=cluster.client):
            for _ in range(3):
                with pytest.raises(WorkerDiedError):
                    Parallel(n_jobs=1)([delayed(kill_self_at)(0, 0)])
                cluster.client.wait_for_workers(2, timeout=30)
                time.sleep(0.5)  # the nanny is closed 50 ms after the death
                cluster.client.wait_for_workers(2, timeout=30)
            assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    finally:
        cluster.close()
