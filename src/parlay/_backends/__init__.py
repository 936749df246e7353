"""The backend registry, and the process-wide cache of open sessions.

Backends are registered by name as ``"module:attribute"`` strings and imported on first
use, so ``import parlay`` imports no engine. Sessions (pools of workers) are opened once
per backend and size and reused by later calls until :func:`shutdown` (also run at
interpreter exit).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from .._exceptions import BackendUnavailableError
from ._base import Backend, Capabilities, Session

if TYPE_CHECKING:
    from .._negotiate import Decision

__all__ = [
    "Backend",
    "Capabilities",
    "Session",
    "acquire_session",
    "backend_class",
    "canonical_name",
    "check_backend_spec",
    "known_names",
    "register_backend",
    "shutdown",
]

logger = logging.getLogger(__name__)

_BUILTIN: Final[dict[str, str]] = {
    "sequential": "parlay._backends.sequential:SequentialBackend",
    "threads": "parlay._backends.threads:ThreadsBackend",
    "processes": "parlay._backends.processes:ProcessesBackend",
    "dask": "parlay._backends.dask:DaskBackend",
    "ray": "parlay._backends.ray:RayBackend",
}
_ALIASES: Final[dict[str, str]] = {
    "threading": "threads",
    "loky": "processes",
    "multiprocessing": "processes",
}
_registry: dict[str, str | type[Backend]] = dict(_BUILTIN)
_loaded: dict[str, type[Backend]] = {}
_lock = threading.RLock()


def known_names() -> list[str]:
    """Every backend name and alias that can be passed as ``backend=``."""
    return sorted({*_registry, *_ALIASES})


def canonical_name(name: str) -> str:
    """Map an alias (``"loky"``) to its backend's name (``"processes"``)."""
    return _ALIASES.get(name, name)


def check_backend_spec(value: object) -> str | Backend:
    """Validate a ``backend=`` value; return its canonical name or the instance."""
    if isinstance(value, Backend):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"backend must be a backend name or a parlay Backend instance, got "
            f"{type(value).__name__}; known names: {', '.join(known_names())}"
        )
    name = canonical_name(value)
    if name not in _registry:
        raise ValueError(f"unknown backend {value!r}; known backends: {', '.join(known_names())}")
    return name


def backend_class(name: str) -> type[Backend]:
    """Load (once) and return the Backend class registered as `name`."""
    name = canonical_name(name)
    with _lock:
        if name in _loaded:
            return _loaded[name]
        spec = _registry.get(name)
        if spec is None:
            raise ValueError(
                f"unknown backend {name!r}; known backends: {', '.join(known_names())}"
            )
        if isinstance(spec, str):
            module_name, _, attribute = spec.partition(":")
            try:
                cls = cast(type[Backend], getattr(importlib.import_module(module_name), attribute))
            except ImportError as exc:
                raise BackendUnavailableError(
                    f"backend {name!r} could not be loaded from {spec}: {exc}"
                ) from exc
        else:
            cls = spec
        _check_requirements(name, cls)
        _loaded[name] = cls
        return cls


def _check_requirements(name: str, cls: type[Backend]) -> None:
    missing = [module for module in cls.requires if importlib.util.find_spec(module) is None]
    if missing:
        fix = f'pip install "parlay[{cls.extra}]"' if cls.extra else f"install {', '.join(missing)}"
        raise BackendUnavailableError(
            f"backend={name!r} needs {', '.join(missing)}, which is not installed: {fix}"
        )


def capabilities_of(name: str) -> Capabilities:
    """The capabilities of the backend registered as `name` (imports no engine)."""
    return backend_class(name).capabilities


def register_backend(name: str, backend: type[Backend] | str) -> None:
    """Register a backend under `name` so that ``backend=name`` selects it.

    Parameters
    ----------
    name : str
        The name users pass as ``backend=``. Built-in names and aliases are reserved.
    backend : Backend subclass or str
        The class, or ``"module:attribute"`` to import it lazily on first use.

    Examples
    --------
    >>> from parlay import register_backend
    >>> register_backend("mine", "my_package.parallel:MyBackend")  # doctest: +SKIP
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name must be an identifier string, got {name!r}")
    if name in _BUILTIN or name in _ALIASES:
        raise ValueError(f"backend name {name!r} is reserved for a built-in backend")
    if isinstance(backend, str):
        if ":" not in backend:
            raise ValueError(f"backend must be 'module:attribute', got {backend!r}")
    elif not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(
            f"backend must be a subclass of parlay.Backend or a 'module:attribute' string, "
            f"got {backend!r}"
        )
    with _lock:
        _registry[name] = backend
        _loaded.pop(name, None)


# -- sessions -----------------------------------------------------------------------------

_sessions: dict[tuple[Any, ...], Session] = {}
_shutdown_hooks: list[Callable[[], None]] = []


def on_shutdown(hook: Callable[[], None]) -> None:
    """Run `hook` in :func:`shutdown`, after the sessions close (engines started by parlay)."""
    with _lock:
        if hook not in _shutdown_hooks:
            _shutdown_hooks.append(hook)


def acquire_session(backend: Backend, decision: Decision, *, cached: bool) -> Session:
    """Return an open session of `backend` for `decision`.

    With ``cached=True`` (top-level calls) the session is shared process-wide and kept
    open for later calls; otherwise it is the caller's to close. Nested calls use
    private sessions: a task must never wait on the pool that runs it.
    """
    if not cached:
        return backend.open(decision)
    key = (backend.name, decision.n_jobs, decision.requested_n_jobs, backend.session_key())
    with _lock:
        session = _sessions.get(key)
        if session is None:
            session = backend.open(decision)
            _sessions[key] = session
            logger.debug("opened %s", session.describe())
        return session


def shutdown() -> None:
    """Close every pool parlay keeps open (worker processes, threads).

    Calls made afterwards open new pools, and measure their tasks' durations afresh
    (calls of a function already run size their first batches from its last call).
    Runs at interpreter exit too.

    Examples
    --------
    >>> import parlay
    >>> parlay.shutdown()
    """
    with _lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        try:
            session.close()
        except Exception:
            logger.exception("closing %s failed", session.describe())
    for hook in list(_shutdown_hooks):
        try:
            hook()
        except Exception:
            logger.exception("a shutdown hook of parlay failed")


atexit.register(shutdown)
