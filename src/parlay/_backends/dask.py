"""Dask distributed (``backend="dask"``): batches as tasks of a ``distributed.Client``.

Which cluster, first match wins:

1. ``parallel_config(backend="dask", client=...)``: that client;
2. ``address=...`` (or ``PARLAY_DASK_ADDRESS``): a client of parlay's to that scheduler;
3. the current client (``distributed.Client.current()``: the user's default client, or
   the worker's client inside a Dask task);
4. an embedded ``LocalCluster`` on 127.0.0.1 that parlay starts once per process (one
   worker process per core, one thread each, no dashboard unless ``dashboard=True``), in
   a host process of its own (``_dask_host``, which says why), reuses, and closes in
   :func:`parlay.shutdown` and at interpreter exit; if the user's process dies, the host
   sees its pipe close and takes the cluster down.

A dying task makes the scheduler give up with ``KilledWorker`` after its retries, which
becomes :class:`parlay.WorkerDiedError`. A nested call made from inside a Dask task
secedes from the worker's thread pool while it waits and rejoins after, so it cannot
deadlock even on one worker with one thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, final

from .._budget import cpu_count, n_jobs_to_workers
from .._exceptions import ParlayError, WorkerDiedError
from .._sharing import share_locally
from .._worker import run_packed, unpack
from . import on_shutdown
from ._base import Backend, BridgedFuture, Capabilities, Session, engine_task_name

if TYPE_CHECKING:
    from .._negotiate import Decision
    from .._worker import Batch, BatchResult

logger = logging.getLogger(__name__)

ADDRESS_ENV = "PARLAY_DASK_ADDRESS"
CONNECT_TIMEOUT = 5.0

_lock = threading.Lock()
_clients: dict[str, Any] = {}  # address -> Client that parlay opened
_embedded: list[EmbeddedCluster] = []  # the cluster parlay started, once started
HOST_START_TIMEOUT = 60.0


class EmbeddedCluster:
    """A LocalCluster on 127.0.0.1 in a host process of parlay's (see ``_dask_host``)."""

    def __init__(self, workers: int, *, threads: int = 1, dashboard: bool = False) -> None:
        command = [sys.executable, "-m", "parlay._backends._dask_host", "--workers", str(workers),
                   "--threads", str(threads)]  # fmt: skip
        if dashboard:
            command.append("--dashboard")
        report_read, report_write = os.pipe()
        command += ["--report-fd", str(report_write)]
        # A session of its own: Ctrl-C in the user's terminal interrupts the user's call
        # (which then restarts the busy workers), not the whole cluster.
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, text=True, start_new_session=True,
                pass_fds=(report_write,),
            )  # fmt: skip
        except BaseException:
            os.close(report_read)
            raise
        finally:
            os.close(report_write)
        try:
            info = self._read_address(report_read)
            self.address: str = info["address"]
            self.dashboard: str | None = info.get("dashboard")
            from distributed import Client

            self.client = Client(self.address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except BaseException:
            self._stop_host()
            raise

    def _read_address(self, fd: int) -> dict[str, Any]:
        with os.fdopen(fd) as report:
            ready, _, _ = select.select([report], [], [], HOST_START_TIMEOUT)
            line = report.readline() if ready else ""
        if not line:
            raise ParlayError(
                f"the embedded Dask cluster did not start within {HOST_START_TIMEOUT:.0f} s "
                f"(host exit code {self.process.poll()}); see the messages above"
            )
        info: dict[str, Any] = json.loads(line)
        return info

    def _stop_host(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        """Close the client, then the cluster and its host process."""
        with contextlib.suppress(Exception):
            self.client.close()
        self._stop_host()


def _embedded_client(dashboard: bool) -> Any:
    """The LocalCluster parlay starts itself, once per process."""
    with _lock:
        if not _embedded:
            cluster = EmbeddedCluster(cpu_count(), dashboard=dashboard)
            _embedded.append(cluster)
            logger.info("started an embedded Dask LocalCluster at %s", cluster.address)
        return _embedded[0].client


def _address_client(address: str) -> Any:
    with _lock:
        client = _clients.get(address)
        if client is None or client.status in ("closing", "closed"):
            from distributed import Client

            try:
                client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ParlayError(
                    f"could not reach the Dask scheduler at {address!r} within "
                    f"{CONNECT_TIMEOUT:.0f} s ({type(exc).__name__}: {exc}); check the "
                    f"address given to parallel_config(address=...) or {ADDRESS_ENV}"
                ) from exc
            _clients[address] = client
        return client


def _current_client() -> Any:
    from distributed import Client, get_client

    try:
        return get_client() if _in_worker_thread() else Client.current(allow_global=True)
    except ValueError:
        return None


def _close_all() -> None:
    """Close the clients and the cluster that parlay itself opened (never the user's)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        embedded = list(_embedded)
        _embedded.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
    for cluster in embedded:
        cluster.close()


on_shutdown(_close_all)


# A finished Dask future, and what to call with a function that gives its result.
_Fetch = tuple[Any, Callable[[Callable[[], Any]], None]]


class _Fetcher:
    """Fetches the results of finished batches in a thread of parlay's, many per round trip.

    distributed runs the done-callbacks of every future of the process in one thread.
    Fetching a result there (``Future.result()``, a round trip through the scheduler)
    held back every other callback, the user's own included, one round trip at a time,
    and a fetch waiting for a lost result to be computed again held them all.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Fetch | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def fetch(self, source: Any, settle: Callable[[Callable[[], Any]], None]) -> None:
        """Call ``settle(get)`` in the fetcher's thread; ``get()`` gives `source`'s result."""
        self._queue.put((source, settle))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="parlay-dask-fetch", daemon=True
                    )
                    self._thread.start()

    def stop(self) -> None:
        """End the thread (parlay.shutdown); a later fetch starts another."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _after_fork(self) -> None:
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None

    def _run(self) -> None:
        while self._round():
            pass

    def _round(self) -> bool:
        """Settle what is queued (waiting for one); False once told to stop. A function
        of its own, so that nothing of a round (futures, results) outlives it while the
        thread waits for the next."""
        items = [self._queue.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        by_client: dict[int, list[_Fetch]] = {}
        for item in items:
            if item is not None:
                by_client.setdefault(id(item[0].client), []).append(item)
        for group in by_client.values():
            self._deliver(group)
        return None not in items

    @staticmethod
    def _deliver(group: list[_Fetch]) -> None:
        values: dict[str, Any] = {}
        ready = {source.key: source for source, _ in group if source.status == "finished"}
        if len(ready) > 1:
            # One round trip for all. A result that failed meanwhile comes back as None
            # (a batch's result is bytes, never None) and is fetched alone, below, which
            # raises its error.
            with contextlib.suppress(Exception):
                values = group[0][0].client.gather(ready, errors="skip")
        for source, settle in group:
            value = values.get(source.key)
            try:
                settle(source.result if value is None else functools.partial(_same, value))
            except Exception:
                logger.exception("settling the future of Dask task %s failed", source.key)


def _same(value: Any) -> Any:
    return value


_FETCHER = _Fetcher()
os.register_at_fork(after_in_child=_FETCHER._after_fork)
on_shutdown(_FETCHER.stop)


# How long a kill waits for the scheduler to drop the killed workers.
_KILL_NOTICE_SECONDS = 5.0


def _kill_worker_process(dask_worker: Any) -> bool:
    """Run on a nanny: SIGKILL its worker process (the nanny then starts a new one)."""
    pid = getattr(dask_worker, "pid", None)
    if not pid:
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def _all_workers_local(client: Any) -> bool:
    """Whether every worker of the cluster runs on this machine (loopback addresses)."""
    from urllib.parse import urlparse

    workers = client.scheduler_info().get("workers", {})
    hosts = {urlparse(address).hostname for address in workers}
    return bool(hosts) and hosts <= {"127.0.0.1", "localhost", "::1"}


def _in_worker_thread() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _key(source: Any) -> Any:
    """The key of a Dask future."""
    return source.key


@final
class DaskSession(Session):
    """A view on a client: how many batches of one call may run at once."""

    def __init__(self, client: Any, requested_n_jobs: int) -> None:
        self._client = client
        self._requested = requested_n_jobs
        self._local: bool | None = None

    @property
    def n_workers(self) -> int:  # type: ignore[override]
        # Read on every call: a cluster can grow or shrink between calls.
        return n_jobs_to_workers(self._requested, sum(self._client.nthreads().values()) or 1)

    def submit(self, batch: Batch) -> Future[BatchResult]:
        payload, shared = batch.pack_sharing(self._put, local=self._is_local())
        # Dask names a task's group (its dashboard colour, its duration estimates) after
        # the key's first word, and after later words only while they are letters alone:
        # "parlay-slice_sum-..." was the group "parlay" for every such function.
        key = f"{engine_task_name(batch)}-{batch.start}-{uuid.uuid4().hex}"
        source = self._client.submit(run_packed, payload, *shared, key=key, pure=False, retries=0)
        target = BridgedFuture(source, source.cancel)
        batch = batch.skeleton()

        def _settle(get: Callable[[], Any]) -> None:
            # A finished task's result can still be lost: its worker may die before the
            # client gathers it, and the gather then raises KilledWorker too.
            target.settle(lambda: unpack(get(), batch), lambda error: self._map_error(error, batch))

        def _done(done: Any) -> None:
            if done.cancelled():
                target.source_cancelled()
            else:
                _FETCHER.fetch(done, _settle)

        source.add_done_callback(_done)
        return target

    def _is_local(self) -> bool:
        if self._local is None:
            self._local = _all_workers_local(self._client)
        return self._local

    def _put(self, value: object) -> Any:
        if self._is_local():
            # Every worker runs on this machine: shared memory, one copy, no transfer.
            return share_locally(value)
        # hash=False: no hashing of a large array to name it; the future is unique.
        return self._client.scatter(value, hash=False)

    def _map_error(self, error: BaseException, batch: Batch) -> BaseException:
        from distributed import KilledWorker

        if isinstance(error, KilledWorker):
            mapped = WorkerDiedError(
                f"the Dask workers running tasks {batch.start}..{batch.start + len(batch) - 1} "
                f"died (the scheduler gave up: {error})",
                tasks=tuple(batch.indices),
            )
            mapped.__cause__ = error
            return mapped
        return error

    def cancel(self, futures: Iterable[Future[BatchResult]], *, kill: bool) -> None:
        futures = list(futures)
        sources: list[Any] = [f.source for f in futures if isinstance(f, BridgedFuture)]
        # A running Dask task cannot be cancelled: a worker's thread runs it to its end.
        busy: list[str] = []  # the workers running ours
        on_workers: set[Any] = set()  # the keys of ours they hold
        if sources:
            keys = {s.key for s in sources}
            with contextlib.suppress(Exception):
                for worker, worker_keys in self._client.processing().items():
                    if mine := keys & set(worker_keys):
                        busy.append(worker)
                        on_workers |= mine
        if not kill:
            # Leave the tasks on workers to finish, so that their futures tell when those
            # threads are free (still_running), and cancel the rest. On a worker means
            # `processing`, which also counts tasks queued there (about one more per
            # thread): they run out too. Asking the workers which tasks execute missed
            # those that started between the question and the cancel, and an untracked
            # one made the next call time out on a healthy task; one tracked too many
            # only delays the next call's clock (by a few timeouts at most).
            futures = [
                f
                for f in futures
                if not (isinstance(f, BridgedFuture) and _key(f.source) in on_workers)
            ]
            sources = [s for s in sources if s.key not in on_workers]
            busy = []
        for future in futures:
            future.cancel()
        if sources:
            with contextlib.suppress(Exception):
                self._client.cancel(sources, force=True)
        if busy:
            logger.debug("killing Dask workers %s", busy)
            self._kill(busy)

    def _kill(self, workers: list[str]) -> None:
        """Kill `workers` at once, each through its nanny, which starts a new worker.

        ``restart_workers`` asks a worker to close first and waits up to 4 s for its
        running tasks, which would go on (and could finish, or crash the worker) after
        the call ended. The caller waits until the scheduler has dropped the killed
        workers (milliseconds): a task of the next call sent to one of them would fail
        with it (``allowed-failures`` is 0 on the embedded cluster).
        """
        gone = []
        for worker in workers:
            # One worker at a time: distributed pairs a broadcast's results with the
            # workers it was given, after dropping those without a nanny.
            with contextlib.suppress(Exception):
                killed = self._client.run(
                    _kill_worker_process, workers=[worker], nanny=True, on_error="return"
                )
                if killed.get(worker) is True:
                    gone.append(worker)
        rest = [w for w in workers if w not in gone]
        if rest:
            # No nanny (or it could not be reached): the scheduler's restart, in the
            # background (it takes seconds).
            threading.Thread(
                target=self._restart, args=(rest,), name="parlay-dask-restart", daemon=True
            ).start()
        deadline = time.monotonic() + _KILL_NOTICE_SECONDS
        while gone and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                known = self._client.nthreads()
                gone = [w for w in gone if w in known]
            if gone:
                time.sleep(0.01)

    def _restart(self, workers: list[str]) -> None:
        with contextlib.suppress(Exception):
            self._client.restart_workers(workers, timeout=30, raise_for_error=False)

    @contextlib.contextmanager
    def _seceded(self) -> Iterator[None]:
        from distributed import rejoin, secede

        secede()
        try:
            yield
        finally:
            rejoin()

    def blocking(self) -> contextlib.AbstractContextManager[None]:
        if _in_worker_thread():
            return self._seceded()
        return contextlib.nullcontext()

    def close(self) -> None:
        pass  # the client belongs to the user, or to the module (closed by shutdown())

    def describe(self) -> str:
        return f"dask ({self._client.scheduler.address}, {self.n_workers} workers)"


@final
class DaskBackend(Backend):
    """Dask distributed: a cluster engine, from a laptop's LocalCluster to a real cluster."""

    name = "dask"
    capabilities = Capabilities(
        shared_memory=False,
        separate_processes=True,
        distributed=True,
        can_kill=True,
        reentrant=True,
        # Each Dask task costs milliseconds of worker messaging, paid in GIL hand-offs
        # with the worker's event loop (measured: 5 ms per 40 ms pure-Python task on 2
        # cores): batches aim longer than on a local pool.
        batch_seconds=0.25,
    )
    requires = ("distributed",)
    extra = "dask"

    def __init__(
        self, *, address: str | None = None, client: Any = None, dashboard: bool = False
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a scheduler address string, got {address!r}")
        if not isinstance(dashboard, bool):
            raise TypeError(f"dashboard must be a bool, got {dashboard!r}")
        self._address = address or os.environ.get(ADDRESS_ENV, "").strip() or None
        self._explicit_address = address is not None
        self._client = client
        self._dashboard = dashboard

    def _resolve_client(self) -> Any:
        if self._client is not None:
            return self._client
        if self._explicit_address and self._address:
            return _address_client(self._address)
        current = _current_client()
        if current is not None:
            return current
        if self._address:
            return _address_client(self._address)
        return _embedded_client(self._dashboard)

    def session_key(self) -> tuple[Any, ...]:
        if self._client is not None:
            return ("client", id(self._client))
        if self._explicit_address:
            return ("address", self._address)
        current = _current_client()
        if current is not None:
            return ("current", id(current))
        return ("address", self._address) if self._address else ("embedded",)

    def open(self, decision: Decision) -> Session:
        return DaskSession(self._resolve_client(), decision.requested_n_jobs)
