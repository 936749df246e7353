"""The front door: ``Parallel``, ``delayed``, ``effective_n_jobs``.

``Parallel`` validates its arguments, resolves each setting against the user's context
(:mod:`parlay._config`), asks :func:`parlay._negotiate.decide` where to run, takes a
session from the backend registry and hands the tasks to :class:`parlay._runner.Call`.
"""

from __future__ import annotations

import ast
import functools
import logging
import numbers
import operator
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast, final

from . import _backends, _budget, _config, _output
from ._backends._base import Backend, Capabilities, Session
from ._config import UNSET
from ._instrument import CallLog, Dispatcher, Instrument, ProgressBar, RichProgressBar
from ._negotiate import CallHints, Decision, UserContext, decide
from ._runner import Call, abandon_later, ensure_abandoner
from ._worker import WorkerContext, in_worker_process

__all__ = ["Parallel", "Task", "delayed", "effective_n_jobs", "explain_last"]

logger = logging.getLogger("parlay")

P = ParamSpec("P")
R = TypeVar("R")

RETURN_AS = ("list", "generator", "generator_unordered")
_ONE_MIB: Final = 1 << 20


class Task(functools.partial[R]):
    """One delayed call: ``func(*args, **kwargs)``, not yet run.

    A :class:`functools.partial` (so calling it runs the task here), with read-only
    ``func``, ``args`` and ``kwargs``. It unpacks as ``func, args, kwargs`` and compares
    equal by them, like the plain tuple joblib's ``delayed`` returns.

    Why a partial: ``delayed(f)(x)`` runs once per task, and a partial is made in C,
    without a Python frame; for tiny tasks that was 40% of their dispatch cost.
    """

    __slots__ = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments (``keywords`` of the partial)."""
        return self.keywords

    def __iter__(self) -> Iterator[Any]:
        return iter((self.func, self.args, self.keywords))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return (self.func, self.args, self.keywords) == (other.func, other.args, other.keywords)

    __hash__ = None  # type: ignore[assignment]  # the keyword arguments are a dict

    def __repr__(self) -> str:
        shown = [repr(value) for value in self.args]
        shown += [f"{name}={value!r}" for name, value in self.keywords.items()]
        return f"Task({_callable_name(self.func)}({', '.join(shown)}))"


def _callable_name(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or func)


def delayed(function: Callable[P, R]) -> Callable[P, Task[R]]:
    """Capture a function's arguments as a :class:`Task`, for :class:`Parallel`.

    Parameters
    ----------
    function : callable
        The function each task calls. For process and cluster backends it must be
        picklable with cloudpickle (lambdas and functions defined in ``__main__`` are).

    Returns
    -------
    callable
        Takes the same arguments as `function` and returns a :class:`Task`. Type
        checkers see the signature of `function`: a wrong argument is an error at the
        call site.

    Examples
    --------
    >>> from parlay import delayed
    >>> task = delayed(pow)(2, 10)
    >>> func, args, kwargs = task
    >>> func(*args, **kwargs)
    1024
    """
    # ``delayed(f)(x) for x in xs`` asks for the same wrapper once per task: the last one
    # is kept, which saves a third of a tiny task's cost to make (and one object for the
    # garbage collector to count). Calls forget it once started and when they end, and
    # so does shutdown(), not to keep `function` (and what it holds) alive; until then
    # the one function last given to delayed stays referenced.
    last = _last_delayed
    if last[0] is function:
        return last[1]  # type: ignore[no-any-return]
    if not callable(function):
        raise TypeError(f"delayed() needs a callable, got {type(function).__name__}: {function!r}")
    # No typing.cast: a function call per task, on W1's 20,000.
    wrapper: Callable[P, Task[R]] = _Delayed(Task, function)
    _remember_delayed((function, wrapper))
    return wrapper


#: The last (function, wrapper) ``delayed`` made: replaced whole, so threads read a pair.
#: (Not None as the empty key: ``delayed(None)`` must fail.)
_NO_FUNCTION = object()
_last_delayed: tuple[Any, Any] = (_NO_FUNCTION, None)


def _remember_delayed(pair: tuple[Any, Any]) -> None:
    global _last_delayed
    _last_delayed = pair


def _forget_delayed() -> None:
    """Let go of the last function given to ``delayed`` (when a call has started, when it
    ends, and at shutdown)."""
    _remember_delayed((_NO_FUNCTION, None))


_backends.on_shutdown(_forget_delayed)


def _closer(session: Session | None) -> Callable[[], None]:
    """What a call runs when it ends: forget ``delayed``'s last function, close a private
    session."""
    if session is None:
        return _forget_delayed

    def close() -> None:
        _forget_delayed()
        session.close()

    return close


@final
class _Delayed(functools.partial[Task[Any]]):
    """What ``delayed(f)`` returns: ``partial(Task, f)``, so that calling it stays in C."""

    __slots__ = ()

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return cast("Callable[..., Any]", self.args[0])

    @property
    def __name__(self) -> str:
        return str(getattr(self.__wrapped__, "__name__", type(self.__wrapped__).__name__))

    def __repr__(self) -> str:
        return f"delayed({self.__wrapped__!r})"


def check_task(item: object, index: int) -> Task[Any]:
    """Accept a :class:`Task` or joblib's ``(func, args, kwargs)`` triple; else TypeError."""
    if type(item) is Task:
        return item
    if (
        isinstance(item, tuple)
        and len(item) == 3
        and callable(item[0])
        and isinstance(item[1], tuple | list)
        and isinstance(item[2], dict | None)
    ):
        return Task(item[0], *item[1], **(item[2] or {}))
    shown = repr(item)
    shown = shown if len(shown) < 80 else shown[:77] + "..."
    raise TypeError(
        f"task {index} is not a delayed call: got {type(item).__name__} {shown}. "
        "Build tasks with parlay.delayed(f)(*args, **kwargs)."
    )


_ONLY_TASKS: Final = frozenset({Task})


def check_tasks(items: list[Any], first: int) -> list[Task[Any]]:
    """:func:`check_task` over `items`, numbered from `first`; `items` itself if all are Tasks."""
    if _ONLY_TASKS.issuperset(map(type, items)):
        return items
    return [check_task(item, index) for index, item in enumerate(items, first)]


def _check_pre_dispatch(value: object) -> str | int:
    if isinstance(value, str):
        text = value.strip()
        if text == "all" or _dispatch_expression(text) is not None:
            return text
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1:
        return int(value)
    raise ValueError(
        f"pre_dispatch must be 'all', a positive int, or an arithmetic expression of n_jobs "
        f"like '2 * n_jobs' or '1.5*n_jobs'; got {value!r}"
    )


_DISPATCH_OPERATORS: Final = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}


def _dispatch_expression(text: str) -> Callable[[int], float] | None:
    """joblib's ``pre_dispatch`` expression (numbers, ``n_jobs``, + - * / //) as a
    function of n_jobs; None if `text` is not one. Nothing else is evaluated."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.expr, n_jobs: int) -> float:
        if isinstance(node, ast.Name) and node.id == "n_jobs":
            return n_jobs
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _DISPATCH_OPERATORS:
            apply = _DISPATCH_OPERATORS[type(node.op)]
            return float(apply(value(node.left, n_jobs), value(node.right, n_jobs)))
        raise ValueError(ast.dump(node))

    try:
        value(tree, 1)
    except (ValueError, ZeroDivisionError):
        return None
    return functools.partial(value, tree)


def _pre_dispatch_batches(value: str | int, n_jobs: int) -> int | None:
    """How many batches may be in flight; None for 'all'."""
    if isinstance(value, int):
        return value
    if value == "all":
        return None
    expression = _dispatch_expression(value)
    assert expression is not None  # checked by _check_pre_dispatch
    return max(1, int(expression(n_jobs)))


def _check_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"timeout must be None or a number of seconds, got {value!r}")
    if not float(value) > 0:
        raise ValueError(f"timeout must be None or > 0 seconds, got {value!r}")
    return float(value)


def _check_batch_size(value: object) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"batch_size must be 'auto' or a positive int, got {value!r}")
    return int(value)


def task_context(decision: Decision, caps: Capabilities, via: str = "") -> WorkerContext:
    """Where the tasks of a call run: their nesting, budget, config and thread limit.

    ``parallel_config(inner_max_num_threads=...)`` is the user's last word on the native
    threads of each task (joblib's name); a value that oversubscribes the cores warns.
    """
    nesting = _budget.current_nesting()
    if not caps.inline:
        nesting = _budget.Nesting(
            level=nesting.level + 1,
            budget=decision.inner_budget,
            parent=f"{decision.backend!r} with {decision.n_jobs} workers{via}",
        )
    threads = _config.resolve("inner_max_num_threads", UNSET, None).value
    if threads is not None and not caps.inline and threads * decision.n_jobs > decision.cores:
        warnings.warn(
            f"inner_max_num_threads={threads} with {decision.n_jobs} workers asks for "
            f"{threads * decision.n_jobs} threads on {decision.cores} cores: oversubscribed",
            ResourceWarning,
            stacklevel=4,
        )
    return WorkerContext(
        nesting,
        _config.current_layers(),
        in_worker=not caps.inline,
        native_threads=threads if threads is not None else nesting.budget,
        log_level=_output.caller_log_level() if caps.separate_processes else logging.WARNING,
    )


def _none_to_unset(value: object) -> object:
    return UNSET if value is None else value


@final
class Parallel:
    """Run delayed calls in parallel, on the backend the negotiation picks.

    joblib's ``Parallel``, with its signature and semantics, so code written for joblib
    runs unchanged. The author of the calling code gives hints (``prefer``,
    ``require``); the user gives resources (:class:`parallel_config`, ``PARLAY_*``
    environment variables); an explicit argument beats both. :meth:`explain` says what
    was chosen and why.

    Parameters
    ----------
    n_jobs : int, optional
        Workers: a positive count, ``-1`` for all cores, ``-2`` for all but one, ...
        Unset (or None), the context's value, else 1 (tasks run inline), as joblib.
        Inside a running task, negative values count the cores that task was given.
    backend : str or Backend, optional
        ``"sequential"``, ``"threads"`` (``"threading"``), ``"processes"``
        (``"loky"``, ``"multiprocessing"``) or a registered name. Unset, the user's
        context decides, then ``prefer``, then the default (processes).
    return_as : {"list", "generator", "generator_unordered"}, default="list"
        A list in task order; a generator in task order, yielding each result as soon
        as it and the ones before it are done; or a generator in completion order.
    verbose : int, optional
        When positive, the decision and a summary of each call (tasks, workers,
        seconds) are logged at INFO on the ``parlay`` logger (parlay never prints).
        Unset, the context's ``parallel_config(verbose=...)``, else 0.
    timeout : float, optional
        Seconds a task may run. Enforced per batch (automatic batching keeps batches
        under a quarter of it); past it, :class:`parlay.TaskTimeoutError` (also a
        built-in ``TimeoutError``) is raised and the stuck work is cancelled, and killed
        on backends whose workers can be killed (processes).
    pre_dispatch : int or str, default="2 * n_jobs"
        How many batches may be queued or running at once (``"all"``: no limit, the
        task iterable is consumed at once).
    batch_size : int or "auto", default="auto"
        Tasks per batch. ``"auto"`` aims each batch at a duration suited to the
        backend, from measured task times, so tiny tasks do not drown in overhead.
    temp_folder : path, optional
        The folder where large arguments are copied once for worker processes on this
        machine (default: ``parallel_config``, ``PARLAY_TEMP_FOLDER``, else ``/dev/shm``,
        or the temp folder when ``/dev/shm`` lacks room). A tmpfs mounted with
        ``huge=within_size`` gives them huge pages, which tasks read faster.
    max_nbytes : int, float, str or None, optional
        Arrays from this size are sent once per call, not in every batch (None: never).
        Unset, the context's ``parallel_config(max_nbytes=...)``, else ``"1M"``.
    mmap_mode
        joblib's setting; accepted and validated so joblib code runs unchanged (tasks
        get copy-on-write arrays, never read-only memmaps).
    prefer : {"threads", "processes"}, optional
        The author's soft hint: what suits the tasks when the user set no backend.
    require : {"sharedmem"}, optional
        The author's hard constraint: the tasks write into objects of the caller, so
        they run where memory is shared (threads), whatever the context says.
    return_exceptions : bool, default=False
        Return a task's exception in place of its result instead of raising it, so
        the other results are kept. Errors of the pool itself (a dead worker, a
        timeout) are still raised.
    progress : bool or {"tqdm", "rich"}, optional
        Show a progress bar of completed tasks, with ``n_jobs=1`` too: True or "tqdm"
        for tqdm (``pip install "parlay[progress]"``; a widget in notebooks), "rich" for
        rich (``pip install "parlay[rich]"``). Unset, the context's
        ``parallel_config(progress=...)``.
    instruments : iterable of Instrument, optional
        Objects that receive the call's events (see :class:`parlay.Instrument`), with
        those of the context.

    Examples
    --------
    >>> from parlay import Parallel, delayed
    >>> Parallel(n_jobs=2, backend="threads")(delayed(pow)(i, 2) for i in range(5))
    [0, 1, 4, 9, 16]
    >>> print(Parallel(n_jobs=2, require="sharedmem").explain())  # doctest: +ELLIPSIS
    backend='threads' with 2 workers (rule: require)
    ...
    """

    def __init__(
        self,
        n_jobs: int | None = None,
        backend: str | Backend | None = None,
        return_as: Literal["list", "generator", "generator_unordered"] = "list",
        verbose: int | _config._Unset = UNSET,
        timeout: float | None = None,
        pre_dispatch: str | int = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = None,
        max_nbytes: float | str | _config._Unset | None = UNSET,
        mmap_mode: str | None = "r",
        prefer: Literal["threads", "processes"] | None = None,
        require: Literal["sharedmem"] | None = None,
        *,
        return_exceptions: bool = False,
        progress: bool | Literal["tqdm", "rich"] | None = None,
        instruments: Iterable[Instrument] = (),
    ) -> None:
        n_jobs_arg = _none_to_unset(n_jobs)
        self._n_jobs = n_jobs_arg if n_jobs_arg is UNSET else _config.check_n_jobs(n_jobs_arg)
        backend_arg = _none_to_unset(backend)
        self._backend = backend_arg if backend_arg is UNSET else _config.check_backend(backend_arg)
        self._return_as = _config.check_choice(return_as, "return_as", RETURN_AS)
        self._verbose = verbose if verbose is UNSET else _config.check_verbose(verbose)
        self._timeout = _check_timeout(timeout)
        self._pre_dispatch = _check_pre_dispatch(pre_dispatch)
        self._batch_size = _check_batch_size(batch_size)
        self._temp_folder = _none_to_unset(_config.check_temp_folder(temp_folder))
        self._max_nbytes = (
            max_nbytes if max_nbytes is UNSET else _config.check_max_nbytes(max_nbytes)
        )
        _config.check_choice(mmap_mode, "mmap_mode", _config.MMAP_MODES)
        self._prefer = _none_to_unset(_config.check_choice(prefer, "prefer", _config.PREFER_VALUES))
        self._require = _none_to_unset(
            _config.check_choice(require, "require", _config.REQUIRE_VALUES)
        )
        if not isinstance(return_exceptions, bool):
            raise TypeError(f"return_exceptions must be a bool, got {return_exceptions!r}")
        self._return_exceptions = return_exceptions
        self._progress = UNSET if progress is None else _config.check_progress(progress)
        self._extra_instruments = _config.check_instruments(instruments)
        self._managed: tuple[Decision, Backend, Session, bool] | None = None

    # -- the negotiation ----------------------------------------------------------------

    def _negotiate(self) -> tuple[Decision, Backend]:
        nesting = _budget.current_nesting()
        backend = _config.resolve("backend", self._backend, None)
        n_jobs = _config.resolve("n_jobs", self._n_jobs, None)
        prefer = _config.resolve("prefer", self._prefer, None)
        require = _config.resolve("require", self._require, None)
        instances = {b.name: b for b in (backend.value,) if isinstance(b, Backend)}
        name = backend.value.name if isinstance(backend.value, Backend) else backend.value

        def capabilities(backend_name: str) -> Capabilities:
            if backend_name in instances:
                return instances[backend_name].capabilities
            return _backends.capabilities_of(backend_name)

        explicit = backend.source == "argument"
        hints = CallHints(
            backend=name if explicit else None,
            n_jobs=n_jobs.value if n_jobs.source == "argument" else None,
            prefer=prefer.value,
            prefer_from=prefer.describe(),
            require=require.value,
            require_from=require.describe(),
            timeout=self._timeout,
        )
        context = UserContext(
            cores=_budget.cpu_count(),
            backend=None if explicit else name,
            backend_from=backend.describe(),
            backend_level=backend.level,
            n_jobs=None if n_jobs.source == "argument" else n_jobs.value,
            n_jobs_from=n_jobs.describe(),
        )
        decision = decide(hints, context, capabilities, nesting)
        if decision.backend in instances:
            return decision, instances[decision.backend]
        params = backend.params if decision.backend == name else {}
        return decision, _backends.backend_class(decision.backend)(**params)

    def explain(self) -> Decision:
        """Say where a call of this ``Parallel`` would run, and why, without running it.

        Returns
        -------
        Decision
            A frozen record (``backend``, ``n_jobs``, ``rule``, ``reasons``, ...) whose
            text form is the decision in words.

        Examples
        --------
        >>> from parlay import Parallel, parallel_config
        >>> with parallel_config(backend="threads"):
        ...     Parallel(n_jobs=2, prefer="processes").explain().backend
        'threads'
        """
        if self._managed is not None:
            return self._managed[0]
        return self._negotiate()[0]

    # -- running ------------------------------------------------------------------------

    def _open(self) -> tuple[Decision, Backend, Session, bool]:
        """The decision, backend and session for a call; True if the caller must close it."""
        if self._managed is not None:
            return self._managed
        decision, backend = self._negotiate()
        remember_decision(decision)
        if decision.oversubscribed:
            warnings.warn(
                f"Parallel(n_jobs={decision.requested_n_jobs}) inside a task whose budget is "
                f"{decision.cores} core(s): {decision.n_jobs} workers oversubscribe the cores",
                ResourceWarning,
                stacklevel=3,
            )
        cached = decision.nesting_level == 0
        session = _backends.acquire_session(backend, decision, cached=cached)
        if self._verbosity():
            logger.info("Parallel: %s", decision)
        return decision, backend, session, not cached

    def __call__(self, iterable: Iterable[Task[R]] | Iterable[Any]) -> Any:
        """Run the tasks of `iterable`; see ``return_as`` for what comes back."""
        try:
            call = self._call(iterable)
            call.start()
        finally:
            # What delayed made for the tasks read so far is no longer needed: a
            # generator of tasks read later fills the cache again, and the call forgets
            # it when it ends (the tasks may never be read further, or run at all).
            _forget_delayed()
        if self._return_as == "list":
            return call.results_list()
        results = (
            call.results_ordered() if self._return_as == "generator" else call.results_unordered()
        )
        ensure_abandoner()
        weakref.finalize(results, abandon_later, call)
        return results

    def _call(self, iterable: Iterable[Any]) -> Call:
        decision, backend, session, private = self._open()
        owns_session = private and self._managed is None
        caps = backend.capabilities
        return Call(
            iterable,
            session=session,
            capabilities=caps,
            context=task_context(decision, caps),
            batch_size=self._batch_size,
            pre_dispatch=_pre_dispatch_batches(self._pre_dispatch, decision.n_jobs),
            timeout=self._timeout,
            return_exceptions=self._return_exceptions,
            max_nbytes=_config.resolve("max_nbytes", self._max_nbytes, _ONE_MIB).value,
            temp_folder=_config.resolve("temp_folder", self._temp_folder, None).value,
            check_tasks=check_tasks,
            instruments=self._instruments(),
            backend_name=decision.backend,
            nesting_level=decision.nesting_level,
            on_close=_closer(session if owns_session else None),
        )

    def _instruments(self) -> Dispatcher | None:
        """The instruments of this call: its own, the context's, and a progress bar."""
        instruments = list(self._extra_instruments)
        for layer in _config.current_layers():
            instruments.extend(layer.values.get("instruments", ()))
        # A bar drawn in a worker process would reach the terminal as captured text:
        # nested calls get bars in the caller's process only (threads), nested below it.
        kind = _config.resolve("progress", self._progress, None).value
        if kind is not None and not in_worker_process():
            instruments.append(ProgressBar() if kind == "tqdm" else RichProgressBar())
        if self._verbosity():
            instruments.append(CallLog())
        return Dispatcher(instruments) if instruments else None

    def _verbosity(self) -> int:
        verbosity: int = _config.resolve("verbose", self._verbose, 0).value
        return verbosity

    def __enter__(self) -> Parallel:
        """Fix the decision and hold one session for every call in the block."""
        if self._managed is not None:
            raise RuntimeError("this Parallel is already in use as a context manager")
        self._managed = self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        managed, self._managed = self._managed, None
        if managed is not None and managed[3]:
            managed[2].close()

    def __repr__(self) -> str:
        shown = {
            "n_jobs": self._n_jobs,
            "backend": self._backend,
            "prefer": self._prefer,
            "require": self._require,
        }
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items() if v is not UNSET)
        return f"Parallel({args})"


_last = threading.local()


def remember_decision(decision: Decision) -> None:
    """Keep the decision of this thread's latest call, for :func:`explain_last`."""
    _last.decision = decision


def explain_last() -> Decision | None:
    """The decision taken for the latest parallel call of this thread, or None.

    joblib calls routed through parlay (scikit-learn's ``n_jobs`` inside a
    ``parlay.parallel_config``) count too, so this tells where a library's hidden call ran.
    Each decision is also logged at DEBUG on the ``parlay.joblib`` logger with its call site.

    Examples
    --------
    >>> from parlay import Parallel, delayed, explain_last
    >>> _ = Parallel(n_jobs=2, backend="threads")(delayed(abs)(-1) for _ in range(2))
    >>> explain_last().backend
    'threads'
    """
    decision: Decision | None = getattr(_last, "decision", None)
    return decision


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """The number of workers a call with this `n_jobs` would use here, now.

    Takes the user's context into account, as a call would: inside
    ``parallel_config(n_jobs=4)``, ``effective_n_jobs(None)`` is 4; inside a task it
    counts the task's budget.

    Examples
    --------
    >>> from parlay import effective_n_jobs, cpu_count
    >>> effective_n_jobs(-1) == cpu_count()
    True
    >>> effective_n_jobs(1)
    1
    """
    return Parallel(n_jobs=n_jobs).explain().n_jobs
