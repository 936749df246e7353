"""The negotiation: one pure function from (author's hints, user's context) to a Decision.

No I/O, no engine import: :func:`decide` reads the hints of the call, the user's
context, the capabilities of the backends involved and where the call is nested, and
returns a frozen :class:`Decision` that carries its reasons. ``Parallel.explain()``
formats that record; it never decides again.

The rules, highest first:

1. ``require="sharedmem"`` is a hard constraint: the call gets a backend whose tasks
   share the caller's memory (threads), whatever the context says. An explicit
   process or cluster backend on the call itself with it is a ``ValueError``.
2. An explicit ``backend=`` argument of the call is taken as it is.
3. The user's context (``parallel_config``, then ``PARLAY_BACKEND``) beats ``prefer``.
4. ``prefer`` applies where the user set no backend.
5. Otherwise the default: processes.
6. One worker (effective ``n_jobs == 1``) runs inline, unless the backend is a cluster and
   the call is made at top level (inside a task, the call is on the cluster already).
7. Inside a task (nesting), ``n_jobs`` counts the cores the task was given (its budget),
   and a backend inherited from outside the task is replaced by threads (or inline for
   a budget of 1), so a task never waits on the pool that runs it. Reentrant backends
   (Dask, whose tasks can leave their worker slot while they wait) are kept.
8. ``n_jobs`` comes from the call, else the user's context (``parallel_config``, then
   ``PARLAY_N_JOBS``). Set nowhere, it is ``-1`` (the whole cluster) where the backend
   is a cluster, as joblib's dask and ray backends do, and 1 elsewhere, as joblib.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ._backends._base import Capabilities
from ._budget import Nesting, n_jobs_to_workers, split_budget

__all__ = ["CallHints", "Decision", "UserContext", "decide"]

DEFAULT_BACKEND: Final = "processes"
SHAREDMEM_BACKEND: Final = "threads"
INLINE_BACKEND: Final = "sequential"


@dataclass(frozen=True, slots=True)
class CallHints:
    """What the author's call says. Each ``*_from`` tells where the value came from."""

    backend: str | None = None
    n_jobs: int | None = None
    n_jobs_from: str = "the call's argument"
    prefer: str | None = None
    prefer_from: str = "the call's argument"
    require: str | None = None
    require_from: str = "the call's argument"
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class UserContext:
    """What the user's side says: parallel_config, the environment, the machine.

    ``backend_level`` is the nesting level the backend setting was made at: a setting
    made outside the running task does not pick the backend of calls inside it.
    """

    cores: int
    backend: str | None = None
    backend_from: str = "parallel_config"
    backend_level: int = 0
    n_jobs: int | None = None
    n_jobs_from: str = "parallel_config"


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a call runs and why.

    Attributes
    ----------
    backend : str
        The backend's registered name.
    n_jobs : int
        How many workers the call uses.
    rule : str
        The rule that picked the backend: ``"require"``, ``"explicit"``, ``"context"``,
        ``"prefer"``, ``"default"``, ``"n_jobs=1"`` or ``"nested"``.
    reasons : tuple of str
        The decision in words, one sentence each, including what was overridden.
    inner_budget : int
        Cores each task may use for its own parallel work.
    cores : int
        Cores available to the call (the machine's, or the budget of the task it runs in).
    nesting_level : int
        0 at top level, 1 inside a task, ...
    requested_n_jobs : int
        n_jobs as asked (``-1``...), before counting cores: a cluster counts its own.
    oversubscribed : bool
        An explicit n_jobs asked for more workers than the cores of the budget.
    """

    backend: str
    n_jobs: int
    rule: str
    reasons: tuple[str, ...] = field(default=())
    inner_budget: int = 1
    cores: int = 1
    nesting_level: int = 0
    requested_n_jobs: int = 1
    oversubscribed: bool = False

    def __str__(self) -> str:
        plural = "worker" if self.n_jobs == 1 else "workers"
        head = f"backend={self.backend!r} with {self.n_jobs} {plural} (rule: {self.rule})"
        return "\n".join([head, *(f"  - {reason}" for reason in self.reasons)])

    __repr__ = __str__


def decide(
    hints: CallHints,
    context: UserContext,
    capabilities: Callable[[str], Capabilities],
    nesting: Nesting,
) -> Decision:
    """Decide the backend and worker count of one call; see the module docstring."""
    nested = nesting.level > 0 and nesting.budget is not None
    cores = nesting.budget if nested and nesting.budget is not None else context.cores
    reasons: list[str] = []
    if nested:
        reasons.append(
            f"this call runs inside a task of {nesting.parent or 'an outer call'} "
            f"(nesting level {nesting.level}), which gave it a budget of {cores} "
            f"core{'s' if cores != 1 else ''}"
        )

    requested = _requested_n_jobs(hints, context)
    # Unset n_jobs depends on the backend (rule 8): pick it as for one worker first.
    picked: list[str] = []
    workers = n_jobs_to_workers(requested[0], cores) if requested is not None else 1
    backend, rule = _pick_backend(hints, context, capabilities, nesting, workers, picked)
    caps = capabilities(backend)
    n_jobs, n_jobs_from = requested if requested is not None else _unset_n_jobs(backend, caps)
    workers = n_jobs_to_workers(n_jobs, cores)
    counted = f"over {cores} core{'s' if cores != 1 else ''} " if n_jobs < 0 else ""
    reasons.append(
        f"n_jobs={n_jobs} ({n_jobs_from}) {counted}gives {workers} worker"
        f"{'s' if workers != 1 else ''}"
    )
    reasons.extend(picked)
    if caps.inline:
        workers = 1
    elif workers == 1 and (nested or not caps.distributed):
        # At top level, n_jobs=1 on a cluster still means "on the cluster"; inside a task,
        # the call is already there, and one worker is the task's own thread.
        backend, rule = _one_worker(backend, rule, caps, hints.timeout, reasons)
        caps = capabilities(backend)

    oversubscribed = nested and not caps.inline and not caps.distributed and workers > cores
    if oversubscribed:
        reasons.append(
            f"n_jobs={n_jobs} asks for {workers} workers where the budget is {cores}: "
            "the user's explicit value is kept, and the cores are oversubscribed"
        )
    inner = cores if caps.inline else split_budget(cores, workers)
    reasons.append(
        f"each task may use {inner} core{'s' if inner != 1 else ''} for its own "
        "parallel work (nested calls)"
    )
    return Decision(
        backend, workers, rule, tuple(reasons), inner, cores, nesting.level, n_jobs, oversubscribed
    )


def _one_worker(
    backend: str, rule: str, caps: Capabilities, timeout: float | None, reasons: list[str]
) -> tuple[str, str]:
    """Rule 6: one worker runs inline, unless a timeout needs a worker it can stop."""
    if timeout is None:
        reasons.append(
            f"one worker: the tasks run inline in the caller rather than on "
            f"{backend!r}, which would only add overhead"
        )
        return INLINE_BACKEND, "n_jobs=1"
    if caps.can_kill:
        reasons.append(
            f"one worker, but timeout={timeout} s: {backend!r} keeps its worker, which can "
            "be killed at the timeout"
        )
        return backend, rule
    reasons.append(
        f"one worker, but timeout={timeout} s: the tasks run on one thread rather than "
        "inline, so that the caller stops waiting at the timeout (an inline task cannot "
        "be interrupted)"
    )
    return SHAREDMEM_BACKEND, "n_jobs=1"


def _requested_n_jobs(hints: CallHints, context: UserContext) -> tuple[int, str] | None:
    """n_jobs and where it came from: the call, else the user's context; None if unset."""
    if hints.n_jobs is not None:
        return hints.n_jobs, hints.n_jobs_from
    if context.n_jobs is not None:
        return context.n_jobs, context.n_jobs_from
    return None


def _unset_n_jobs(backend: str, caps: Capabilities) -> tuple[int, str]:
    """Rule 8: n_jobs set nowhere is the whole cluster on a cluster, else 1 (joblib's)."""
    if caps.distributed:
        return -1, (
            f"n_jobs is set nowhere, and {backend!r} is a cluster: the whole cluster, "
            "as joblib's dask and ray backends do"
        )
    return 1, "n_jobs is set nowhere: 1, joblib's default"


def _pick_backend(
    hints: CallHints,
    context: UserContext,
    capabilities: Callable[[str], Capabilities],
    nesting: Nesting,
    workers: int,
    reasons: list[str],
) -> tuple[str, str]:
    """Rules 1 to 5 and 7 of the module docstring; returns (backend, rule)."""
    context_backend = context.backend
    if context_backend is not None and nesting.level > context.backend_level:
        if capabilities(context_backend).reentrant:
            reasons.append(
                f"{context_backend!r} from {context.backend_from} outside the task "
                "takes nested calls back without holding the task's worker"
            )
        else:
            reasons.append(
                f"{context_backend!r} from {context.backend_from} was set outside "
                "the running task, so it does not pick this nested call's backend"
            )
            context_backend = None

    if hints.require == "sharedmem":
        return _sharedmem_backend(hints, context_backend, context, capabilities, reasons)
    if hints.backend is not None:
        reasons.append(f"backend={hints.backend!r} is the call's own argument")
        return hints.backend, "explicit"
    if context_backend is not None:
        note = ""
        if hints.prefer is not None:
            note = f"; it beats prefer={hints.prefer!r} ({hints.prefer_from})"
        reasons.append(f"backend={context_backend!r} comes from {context.backend_from}{note}")
        return context_backend, "context"
    if nesting.level > 0 and nesting.budget is not None:
        if workers > 1:
            chosen = SHAREDMEM_BACKEND
            reasons.append(
                f"inside a task, a call runs on {chosen!r} so that it never waits on the pool "
                "running its parent (no deadlock)"
            )
        else:
            chosen = INLINE_BACKEND
            reasons.append("inside a task with one worker to use, the call runs inline")
        return chosen, "nested"
    if hints.prefer is not None:
        reasons.append(f"prefer={hints.prefer!r} ({hints.prefer_from}) and the user set no backend")
        return hints.prefer, "prefer"
    reasons.append(
        f"no backend was set or preferred: the default is {DEFAULT_BACKEND!r}, "
        "which runs Python code in parallel whatever the GIL"
    )
    return DEFAULT_BACKEND, "default"


def _sharedmem_backend(
    hints: CallHints,
    context_backend: str | None,
    context: UserContext,
    capabilities: Callable[[str], Capabilities],
    reasons: list[str],
) -> tuple[str, str]:
    why = f"require='sharedmem' ({hints.require_from})"
    if hints.backend is not None:
        if not capabilities(hints.backend).shared_memory:
            raise ValueError(
                f"backend={hints.backend!r} and require='sharedmem' contradict each other: "
                f"{hints.backend!r} runs tasks in other processes, which cannot write into "
                "the caller's objects. Use backend='threads' or drop require='sharedmem'."
            )
        reasons.append(
            f"backend={hints.backend!r} is the call's own argument and shares "
            f"memory, as {why} needs"
        )
        return hints.backend, "explicit"
    if context_backend is not None and capabilities(context_backend).shared_memory:
        reasons.append(
            f"backend={context_backend!r} comes from {context.backend_from} and "
            f"shares memory, as {why} needs"
        )
        return context_backend, "context"
    if context_backend is not None:
        reasons.append(
            f"{why}: the tasks write into shared objects, so they run on "
            f"{SHAREDMEM_BACKEND!r} instead of {context_backend!r} from "
            f"{context.backend_from}, whose workers do not share memory"
        )
    elif hints.prefer is not None and hints.prefer != SHAREDMEM_BACKEND:
        reasons.append(
            f"{why} overrides prefer={hints.prefer!r}: the tasks need shared "
            f"memory, so {SHAREDMEM_BACKEND!r}"
        )
    else:
        reasons.append(f"{why}: the tasks need shared memory, so {SHAREDMEM_BACKEND!r}")
    return SHAREDMEM_BACKEND, "require"
