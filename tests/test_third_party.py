"""A backend written outside parlay, on the public contract only, passes the kit."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import pytest

import parlay
from parlay import Backend, Batch, BatchResult, Capabilities, Decision, Session, testing
from parlay._backends import _loaded, _registry


class StdlibProcessSession(Session):
    """Batches on the standard library's ProcessPoolExecutor, packed by parlay."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self._pool = ProcessPoolExecutor(n_workers)
        self._sources: weakref.WeakKeyDictionary[Future[BatchResult], Future[bytes]] = (
            weakref.WeakKeyDictionary()
        )

    def cancel(self, futures: Iterable[Future[BatchResult]], *, kill: bool) -> None:
        # The contract: cancel what has not started. A running batch's future stays
        # pending until its work ends (which tells the runner when the worker is free).
        for future in futures:
            source = self._sources.pop(future, None)
            if source is None or source.cancel():
                future.cancel()

    def submit(self, batch: Batch) -> Future[BatchResult]:
        source = self._pool.submit(Batch.run_packed, batch.pack())
        result: Future[BatchResult] = Future()
        self._sources[result] = source

        def done(f: Future[bytes]) -> None:
            if f.cancelled():
                result.cancel()
                result.set_running_or_notify_cancel()
                return
            if result.cancelled():
                return
            error = f.exception()
            if error is not None:
                result.set_exception(error)
                return
            try:
                result.set_result(batch.unpack(f.result()))
            except BaseException as exc:
                result.set_exception(exc)

        source.add_done_callback(done)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class StdlibProcessBackend(Backend):
    name = "stdlib_processes"
    capabilities = Capabilities(shared_memory=False, separate_processes=True)

    def open(self, decision: Decision) -> Session:
        return StdlibProcessSession(decision.n_jobs)


class NeedsAnEngine(StdlibProcessBackend):
    name = "needs_engine"
    requires = ("parlay_no_such_engine",)
    extra = "imaginary"


@pytest.fixture
def registered() -> Iterator[None]:
    parlay.register_backend("stdlib_processes", StdlibProcessBackend)
    parlay.register_backend("needs_engine", NeedsAnEngine)
    yield
    for name in ("stdlib_processes", "needs_engine"):
        _registry.pop(name, None)
        _loaded.pop(name, None)


# The checks this minimal backend is not built for: it cannot kill, and the standard
# library's pool breaks for good when a worker dies.
SKIP = {"timeout", "timeout_kills", "dead_worker", "dead_worker_stops_the_call"}


@pytest.mark.parametrize("check", sorted(set(testing.CHECKS) - SKIP))
def test_third_party_backend_passes_the_kit(registered: None, check: str) -> None:
    testing.CHECKS[check]("stdlib_processes", n_jobs=2)


def test_an_instance_can_be_passed_directly() -> None:
    out = parlay.Parallel(n_jobs=2, backend=StdlibProcessBackend())(
        parlay.delayed(abs)(-i) for i in range(5)
    )
    assert out == [0, 1, 2, 3, 4]


def test_missing_engine_names_the_extra(registered: None) -> None:
    with pytest.raises(parlay.BackendUnavailableError, match=r'pip install "parlay\[imaginary\]"'):
        parlay.Parallel(n_jobs=2, backend="needs_engine").explain()
    with pytest.raises(ImportError):  # it is also an ImportError
        parlay.Parallel(n_jobs=2, backend="needs_engine").explain()


def test_register_backend_validates() -> None:
    with pytest.raises(ValueError, match="reserved"):
        parlay.register_backend("threads", StdlibProcessBackend)
    with pytest.raises(ValueError, match="identifier"):
        parlay.register_backend("not a name", StdlibProcessBackend)
    with pytest.raises(TypeError, match=r"subclass of parlay\.Backend"):
        parlay.register_backend("x", object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="module:attribute"):
        parlay.register_backend("x", "no_colon")
