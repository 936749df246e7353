"""Ray (``backend="ray"``): batches as plain remote functions, no actor pool per call.

Which Ray, first match wins: a Ray already initialized in this process (used as it is);
``address=...`` (or ``PARLAY_RAY_ADDRESS``) of a cluster to connect to; else a local Ray
that parlay starts once per process with one CPU per core, no dashboard, its temporary
files in a ``parlay-ray-*`` folder that parlay removes at shutdown, and Ray's start-up
messages below ERROR. Whatever parlay started, :func:`parlay.shutdown` stops.

Security note: a local Ray node listens beyond the loopback interface (Ray binds its
services to the node's address) and protects itself with token authentication, whose
token Ray writes under ``~/.ray``. parlay asks Ray to use 127.0.0.1 as the node address.

A task's worker that dies gives ``WorkerCrashedError`` at once (``max_retries=0``), which
becomes :class:`parlay.WorkerDiedError`; ``ray.cancel(force=True)`` kills a running task,
so timeouts, worker deaths and Ctrl-C stop the work. A call that ends early for any other
reason (a task's error, a generator closed) lets its submitted tasks run out and drops
their results. The reason is a Ray bug: ``ray.cancel`` of a task that is finishing at
that moment aborts the *driver process* in Ray's own code ("Check failed: it !=
submissible_tasks_.end() Tried to complete task that was not pending", Ray 2.60). Loops
cancelling short tasks as they finished died within 20 s in 3 of 3 runs with
``force=False`` and in 1 of 5 with ``force=True`` (some 20,000 cancels a run); so parlay
cancels only to kill, which is rare. An ordinary early end costs the work of the batches
already sent (``pre_dispatch`` bounds them; a short call goes as one batch per worker),
and those hold their workers until they end: a later call's timeout does not count its
wait for them (``Session.still_running``, the runner's orphans).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
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

ADDRESS_ENV = "PARLAY_RAY_ADDRESS"

_lock = threading.Lock()
_started: list[str] = []  # the temp folder of the Ray that parlay started, if any


@contextlib.contextmanager
def _quiet_start() -> Iterator[None]:
    """Keep Ray's usage-stats notice off the terminal, without leaving the variable set."""
    name = "RAY_USAGE_STATS_ENABLED"
    old = os.environ.get(name)
    os.environ[name] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


CONNECT_TIMEOUT = 5.0


def _check_reachable(address: str) -> None:
    """Fail fast on an address nobody listens at: ray.init retries it for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"Ray address must look like 'host:port' or 'ray://host:port', got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ParlayError(
            f"could not reach the Ray cluster at {address!r} within {CONNECT_TIMEOUT:.0f} s "
            f"({exc}); check the address given to parallel_config(address=...) or {ADDRESS_ENV}"
        ) from exc


def _ensure_ray(address: str | None) -> None:
    import ray

    with _lock:
        if ray.is_initialized():
            return
        options: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": True,
        }
        if address:
            _check_reachable(address)
            try:
                with _quiet_start():
                    ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ParlayError(
                    f"could not connect to the Ray cluster at {address!r} "
                    f"({type(exc).__name__}: {exc}); check the address given to "
                    f"parallel_config(address=...) or {ADDRESS_ENV}"
                ) from exc
            _started.append("")
            return
        folder = tempfile.mkdtemp(prefix="parlay-ray-")
        with _quiet_start():
            ray.init(
                num_cpus=cpu_count(),
                _temp_dir=folder,
                _node_ip_address="127.0.0.1",
                **options,
            )
        _started.append(folder)
        logger.info("started a local Ray with %d CPUs (temp files in %s)", cpu_count(), folder)


def _stop_ray() -> None:
    """Stop the Ray that parlay started (never one the user initialized)."""
    with _lock:
        if not _started:
            return
        folder = _started.pop()
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


on_shutdown(_stop_ray)


def _all_nodes_local() -> bool:
    """Whether every node of the Ray cluster is this machine (workers can map its memory)."""
    import psutil
    import ray

    mine = {a.address for addresses in psutil.net_if_addrs().values() for a in addresses}
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return bool(nodes) and all(node.get("NodeManagerAddress") in mine for node in nodes)


@functools.cache
def _remote_run() -> Any:
    import ray

    # Plain remote function, made once: no actor pool to build per call. max_retries=0:
    # a task that kills its worker is reported, not run again.
    return ray.remote(max_retries=0, num_cpus=1)(run_packed)


@functools.lru_cache(maxsize=256)
def _named_run(name: str) -> Any:
    """The remote function under the name of the batch's function, for Ray's dashboard and
    state API, which showed every parlay task as ``run_packed`` (``ray.timeline()`` names
    tasks by their Python function still). Made once per name: made for each batch,
    ``.options(name=...)`` cost 45 us a submit; kept, nothing (170 us either way)."""
    return _remote_run().options(name=name)


_DEATHS = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError")


@final
class RaySession(Session):
    """Batches as tasks of the remote function; the cluster's CPUs bound n_jobs=-1."""

    def __init__(self, requested_n_jobs: int) -> None:
        self._requested = requested_n_jobs
        self._local: bool | None = None

    @property
    def n_workers(self) -> int:  # type: ignore[override]
        import ray

        return n_jobs_to_workers(self._requested, int(ray.cluster_resources().get("CPU", 1)) or 1)

    def submit(self, batch: Batch) -> Future[BatchResult]:
        import ray

        if self._local is None:
            self._local = _all_nodes_local()
        # Every node on this machine: one copy in shared memory, which the workers map,
        # rather than ray.put into the object store (measured for W4: up to 2.3x the
        # array's size in extra memory, against one copy).
        put = share_locally if self._local else ray.put
        payload, shared = batch.pack_sharing(put, local=self._local)
        ref = _named_run(engine_task_name(batch)).remote(payload, *shared)
        source = ref.future()
        # Never ray.cancel(force=False): see the module's docstring (it can crash the driver).
        target = BridgedFuture(ref, lambda: None)
        batch = batch.skeleton()
        target.follow(
            source, lambda data: unpack(data, batch), lambda error: self._map_error(error, batch)
        )
        return target

    def _map_error(self, error: BaseException, batch: Batch) -> BaseException:
        if type(error).__name__ in _DEATHS:
            first, last = batch.start, batch.start + len(batch) - 1
            mapped = WorkerDiedError(
                f"the Ray worker running tasks {first}..{last} died "
                f"({type(error).__name__}: {str(error).splitlines()[0]})",
                tasks=tuple(batch.indices),
            )
            mapped.__cause__ = error
            return mapped
        return error

    def cancel(self, futures: Iterable[Future[BatchResult]], *, kill: bool) -> None:
        import ray

        killed = []
        for future in futures:
            if kill and isinstance(future, BridgedFuture) and not future.done():
                with contextlib.suppress(Exception):
                    ray.cancel(future.source, force=True)
                    killed.append(future.source)
            # Without kill, the Ray task runs out; its result is dropped (see the module's
            # docstring: a gentle ray.cancel can crash the driver).
            future.cancel()
        if killed:
            # ray.cancel(force=True) returns before the worker is gone, and a task sent
            # meanwhile could be pushed to it: the next call's first tasks died with
            # WorkerCrashedError within 1-7 timed-out calls of a loop. Once the killed
            # tasks' results have settled, Ray has seen those workers die.
            ray.wait(killed, num_returns=len(killed), timeout=5.0, fetch_local=False)

    def still_running(self, futures: Iterable[Future[Any]]) -> list[Future[Any]]:
        # Our futures were cancelled at once; the Ray tasks run out (see cancel).
        followed = [f.followed for f in futures if isinstance(f, BridgedFuture)]
        return [f for f in followed if f is not None and not f.done()]

    def close(self) -> None:
        pass  # Ray belongs to the user, or to the module (stopped by shutdown())

    def describe(self) -> str:
        return f"ray ({self.n_workers} workers)"


@final
class RayBackend(Backend):
    """Ray: a cluster engine, local or remote."""

    name = "ray"
    capabilities = Capabilities(
        shared_memory=False,
        separate_processes=True,
        distributed=True,
        can_kill=True,
        batch_seconds=0.1,
    )
    requires = ("ray",)
    extra = "ray"

    def __init__(self, *, address: str | None = None) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a Ray address string, got {address!r}")
        self._address = address or os.environ.get(ADDRESS_ENV, "").strip() or None

    def session_key(self) -> tuple[Any, ...]:
        return (self._address,)

    def open(self, decision: Decision) -> Session:
        _ensure_ray(self._address)
        return RaySession(decision.requested_n_jobs)
