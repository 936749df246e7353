"""The user's side: ``parallel_config``, the ``PARLAY_*`` environment, and precedence.

A setting comes from, highest first: an explicit argument of the call; the innermost
``parallel_config`` that set it; the environment (``PARLAY_BACKEND``, ``PARLAY_N_JOBS``,
``PARLAY_TEMP_FOLDER``); the default. :func:`resolve` does that in one place and returns
the value together with where it came from, which the negotiation turns into reasons.

Every public input is validated here, at the front door, before any worker starts.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, final

from . import _budget

__all__ = ["UNSET", "ConfigLayer", "Setting", "parallel_config", "resolve"]


@final
class _Unset:
    """The type of :data:`UNSET`: "not given", unlike any value a user can pass."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

PREFER_VALUES: Final = (None, "threads", "processes")
REQUIRE_VALUES: Final = (None, "sharedmem")
MMAP_MODES: Final = (None, "r+", "r", "w+", "c")
ENV_VARS: Final = {
    "backend": "PARLAY_BACKEND",
    "n_jobs": "PARLAY_N_JOBS",
    "temp_folder": "PARLAY_TEMP_FOLDER",
}

Source = Literal["argument", "parallel_config", "environment", "default"]


# -- validation ---------------------------------------------------------------------------


def check_n_jobs(value: object, name: str = "n_jobs") -> int | None:
    """Validate n_jobs: a nonzero int, or None (unset). Returns the int or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int (-1 for all cores, or a positive count) or None, "
            f"got {value!r} of type {type(value).__name__}"
        )
    if value == 0:
        raise ValueError(
            f"{name}=0 is not allowed: use a positive count, -1 for all cores, "
            "-2 for all but one, ... or None"
        )
    return int(value)


def check_choice(value: object, name: str, allowed: tuple[object, ...]) -> Any:
    """Validate that `value` is one of `allowed`, naming the parameter if not."""
    if value not in allowed or isinstance(value, bool):
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Validate a bool parameter."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


PROGRESS_KINDS: Final = ("tqdm", "rich")


def check_progress(value: object) -> str | None:
    """Validate ``progress``: True (tqdm), False, "tqdm" or "rich"; None means no bar."""
    if value is True:
        return "tqdm"
    if value is False:
        return None
    if isinstance(value, str) and value in PROGRESS_KINDS:
        return value
    raise ValueError(f"progress must be True, False, 'tqdm' or 'rich', got {value!r}")


def check_instruments(value: object) -> tuple[Any, ...]:
    """Validate instruments: an iterable of parlay.Instrument objects."""
    from ._instrument import Instrument

    items = (value,) if isinstance(value, Instrument) else value
    try:
        instruments: tuple[Any, ...] = tuple(items)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"instruments must be parlay.Instrument objects, got {value!r}") from None
    for item in instruments:
        if not isinstance(item, Instrument):
            raise TypeError(f"instruments must be parlay.Instrument objects, got {item!r}")
    return instruments


def check_verbose(value: object) -> int:
    """Validate verbose: a non-negative int (joblib's scale; bools are accepted as 0/1)."""
    if not isinstance(value, numbers.Integral):
        raise TypeError(f"verbose must be a non-negative int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"verbose must be >= 0, got {value}")
    return int(value)


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> int | None:
    """Validate a positive int (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


_BYTE_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def check_max_nbytes(value: object) -> int | None:
    """Validate max_nbytes: None, a non-negative number of bytes, or a string like ``"1M"``."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().upper()
        unit = text[-1:] if text[-1:] in _BYTE_UNITS else ""
        number = text[: len(text) - len(unit)]
        if number.isdigit():
            return int(number) * _BYTE_UNITS[unit]
        raise ValueError(
            f"max_nbytes must be an int or a string like '1M', '500K', '2G'; got {value!r}"
        )
    # joblib's own documentation passes floats (max_nbytes=1e6).
    size = float(value) if isinstance(value, numbers.Real) else -1.0
    if isinstance(value, bool) or not 0 <= size < 2**63:
        raise ValueError(
            f"max_nbytes must be None, a non-negative number of bytes or a string like '1M'; "
            f"got {value!r}"
        )
    return int(value) if isinstance(value, numbers.Integral) else int(size)


def check_temp_folder(value: object, name: str = "temp_folder") -> str | None:
    """Validate temp_folder: None or the path of an existing folder."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be None or a path, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ValueError(f"{name} must be an existing folder, got {value!r}")
    return path


def check_backend(value: object) -> object:
    """Validate a backend: a registered name (or alias), or a Backend instance."""
    from ._backends import check_backend_spec  # the registry validates names

    return check_backend_spec(value)


# -- the context --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigLayer:
    """One ``parallel_config`` block: the keys it set, and the nesting level it was set at.

    Plain dicts (never mutated after construction) so that a layer pickles into process
    workers, which carry the caller's configuration into nested calls.
    """

    values: Mapping[str, Any]
    backend_params: Mapping[str, Any] = field(default_factory=dict)
    level: int = 0


_LAYERS: contextvars.ContextVar[tuple[ConfigLayer, ...]] = contextvars.ContextVar(
    "parlay_config", default=()
)


def current_layers() -> tuple[ConfigLayer, ...]:
    """The active ``parallel_config`` layers, outermost first."""
    return _LAYERS.get()


def set_layers(layers: tuple[ConfigLayer, ...]) -> contextvars.Token[tuple[ConfigLayer, ...]]:
    """Install `layers` (used by workers to carry the caller's config into a task)."""
    return _LAYERS.set(layers)


def reset_layers(token: contextvars.Token[tuple[ConfigLayer, ...]]) -> None:
    """Undo :func:`set_layers`."""
    _LAYERS.reset(token)


@functools.cache
def _joblib_installed() -> bool:
    return importlib.util.find_spec("joblib") is not None


@final
class parallel_config:
    """Set the resources for every parallel call made in this context.

    The user's side of the negotiation: which backend, how many workers, and so on.
    Settings apply to every :class:`Parallel` call in the ``with`` block, in this thread
    and in the tasks those calls run; an explicit argument of a call still wins.
    Blocks nest, the innermost setting of each key winning. Each thread has its own
    context (it is a :mod:`contextvars` variable, never a global), so concurrent threads
    may hold different configurations.

    Parameters
    ----------
    backend : str or Backend, optional
        ``"sequential"``, ``"threads"`` (alias ``"threading"``), ``"processes"`` (aliases
        ``"loky"``, ``"multiprocessing"``), or a name registered with
        :func:`parlay.register_backend`. Beats the author's ``prefer``; loses only to
        ``require="sharedmem"``.
    n_jobs : int, optional
        Workers: a positive count, ``-1`` for all cores, ``-2`` for all but one, ...
    verbose : int, optional
        joblib's verbosity scale; parlay logs progress at INFO when it is positive.
    prefer : {"threads", "processes"}, optional
        A soft hint, as the author's ``prefer`` of :class:`Parallel`.
    require : {"sharedmem"}, optional
        A hard constraint, as the author's ``require`` of :class:`Parallel`.
    inner_max_num_threads : int, optional
        Threads allowed to native (BLAS/OpenMP) pools in each worker.
    temp_folder : path, optional
        The folder for the shared copies of large arguments and for :func:`parlay.share`
        arrays made in the block (default: ``PARLAY_TEMP_FOLDER``, else ``/dev/shm``).
        A tmpfs mounted with ``huge=within_size`` gives them huge pages.
    max_nbytes, mmap_mode
        joblib's large-argument settings, accepted so joblib code runs unchanged.
    progress : bool or {"tqdm", "rich"}, optional
        A progress bar of completed tasks for every call in the block (True: tqdm).
    instruments : iterable of Instrument, optional
        Objects that receive the events of every call in the block.
    **backend_params
        Options for the backend (for example a cluster address); they need ``backend``.

    Examples
    --------
    >>> from parlay import Parallel, delayed, parallel_config
    >>> with parallel_config(backend="threads", n_jobs=2):
    ...     Parallel()(delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """

    __slots__ = ("_joblib", "_layer", "_token")

    def __init__(
        self,
        backend: object = UNSET,
        *,
        n_jobs: object = UNSET,
        verbose: object = UNSET,
        prefer: object = UNSET,
        require: object = UNSET,
        inner_max_num_threads: object = UNSET,
        max_nbytes: object = UNSET,
        temp_folder: object = UNSET,
        mmap_mode: object = UNSET,
        progress: object = UNSET,
        instruments: object = UNSET,
        **backend_params: Any,
    ) -> None:
        checks: dict[str, Callable[[Any], object]] = {
            "backend": check_backend,
            "n_jobs": check_n_jobs,
            "verbose": check_verbose,
            "prefer": lambda v: check_choice(v, "prefer", PREFER_VALUES),
            "require": lambda v: check_choice(v, "require", REQUIRE_VALUES),
            "inner_max_num_threads": lambda v: check_positive_int(
                v, "inner_max_num_threads", allow_none=True
            ),
            "max_nbytes": check_max_nbytes,
            "temp_folder": check_temp_folder,
            "mmap_mode": lambda v: check_choice(v, "mmap_mode", MMAP_MODES),
            "progress": check_progress,
            "instruments": check_instruments,
        }
        given = {
            "backend": backend,
            "n_jobs": n_jobs,
            "verbose": verbose,
            "prefer": prefer,
            "require": require,
            "inner_max_num_threads": inner_max_num_threads,
            "max_nbytes": max_nbytes,
            "temp_folder": temp_folder,
            "mmap_mode": mmap_mode,
            "progress": progress,
            "instruments": instruments,
        }
        values = {k: checks[k](v) for k, v in given.items() if v is not UNSET}
        if backend_params and (backend is UNSET or backend is None):
            raise TypeError(
                f"parallel_config got backend parameters {sorted(backend_params)} without a "
                "backend: pass backend=... too"
            )
        self._layer = ConfigLayer(
            values=values,
            backend_params=dict(backend_params),
            level=_budget.current_nesting().level,
        )
        self._token: contextvars.Token[tuple[ConfigLayer, ...]] | None = None
        self._joblib: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> parallel_config:
        if self._token is not None:
            raise RuntimeError("this parallel_config is already active; make a new one")
        self._token = _LAYERS.set((*_LAYERS.get(), self._layer))
        if _joblib_installed():
            # joblib's calls in this block (scikit-learn's n_jobs) go through parlay too.
            from .joblib import activated

            self._joblib = activated()
            self._joblib.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._joblib is not None:
            self._joblib.__exit__(exc_type, exc, tb)
            self._joblib = None
        if self._token is not None:
            _LAYERS.reset(self._token)
            self._token = None

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self._layer.values.items())
        return f"parallel_config({items})"


# -- precedence ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """A resolved setting: the value, where it came from, and the level it was set at."""

    value: Any
    source: Source
    level: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    env_var: str = ""

    def describe(self) -> str:
        """Say where the value came from, in words, for ``explain()``."""
        if self.source == "environment":
            return f"the environment ({self.env_var})"
        return {
            "argument": "the call's argument",
            "parallel_config": "parallel_config",
            "default": "the default",
        }[self.source]


def resolve(key: str, explicit: object, default: object) -> Setting:
    """Resolve one setting: explicit argument > parallel_config > environment > default."""
    nesting_level = _budget.current_nesting().level
    if explicit is not UNSET:
        return Setting(explicit, "argument", nesting_level)
    for layer in reversed(_LAYERS.get()):
        if key in layer.values:
            params = layer.backend_params if key == "backend" else {}
            return Setting(layer.values[key], "parallel_config", layer.level, params)
    env_name = ENV_VARS.get(key)
    if env_name is not None:
        raw = os.environ.get(env_name, "").strip()
        if raw:
            value = _from_env(key, env_name, raw)
            return Setting(value, "environment", 0, env_var=env_name)
    return Setting(default, "default", 0)


def _from_env(key: str, env_name: str, raw: str) -> object:
    try:
        if key == "n_jobs":
            return check_n_jobs(_budget.env_int(env_name), env_name)
        if key == "temp_folder":
            return check_temp_folder(raw, env_name)
        return check_backend(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"environment variable {env_name}={raw!r} is invalid: {exc}") from None
