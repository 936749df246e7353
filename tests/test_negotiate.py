"""The negotiation as a table: call hints x user context x nesting -> backend and rule."""

from __future__ import annotations

import itertools

import pytest

from parlay import Capabilities
from parlay._budget import Nesting
from parlay._negotiate import CallHints, Decision, UserContext, decide

CAPS = {
    "sequential": Capabilities(shared_memory=True, separate_processes=False, inline=True),
    "threads": Capabilities(shared_memory=True, separate_processes=False),
    "processes": Capabilities(shared_memory=False, separate_processes=True, can_kill=True),
    # A cluster engine, as the dask and ray backends declare themselves.
    "cluster": Capabilities(
        shared_memory=False, separate_processes=True, distributed=True, reentrant=True
    ),
}
TOP = Nesting()
NESTED_1 = Nesting(level=1, budget=1, parent="'processes' with 4 workers")
NESTED_4 = Nesting(level=1, budget=4, parent="'processes' with 2 workers")


def run(
    *,
    backend: str | None = None,
    prefer: str | None = None,
    require: str | None = None,
    n_jobs: int | None = 2,
    timeout: float | None = None,
    context: str | None = None,
    context_level: int = 0,
    context_n_jobs: int | None = None,
    nesting: Nesting = TOP,
    cores: int = 8,
) -> Decision:
    hints = CallHints(
        backend=backend, n_jobs=n_jobs, prefer=prefer, require=require, timeout=timeout
    )
    user = UserContext(
        cores=cores, backend=context, backend_level=context_level, n_jobs=context_n_jobs
    )
    return decide(hints, user, CAPS.__getitem__, nesting)


# (call hints, context backend, nesting) -> (backend, rule)
TABLE = [
    # rule 5: the default
    ({}, None, TOP, "processes", "default"),
    # rule 4: prefer, where the user set nothing
    ({"prefer": "threads"}, None, TOP, "threads", "prefer"),
    ({"prefer": "processes"}, None, TOP, "processes", "prefer"),
    # rule 3: the user's context beats prefer
    ({"prefer": "processes"}, "threads", TOP, "threads", "context"),
    ({"prefer": "threads"}, "processes", TOP, "processes", "context"),
    ({"prefer": "threads"}, "cluster", TOP, "cluster", "context"),
    ({}, "cluster", TOP, "cluster", "context"),
    # rule 2: an explicit backend on the call beats the context
    ({"backend": "threads"}, "processes", TOP, "threads", "explicit"),
    ({"backend": "processes", "prefer": "threads"}, "cluster", TOP, "processes", "explicit"),
    # rule 1: require="sharedmem" beats everything
    ({"require": "sharedmem"}, None, TOP, "threads", "require"),
    ({"require": "sharedmem"}, "processes", TOP, "threads", "require"),
    ({"require": "sharedmem"}, "cluster", TOP, "threads", "require"),
    ({"require": "sharedmem", "prefer": "processes"}, None, TOP, "threads", "require"),
    ({"require": "sharedmem"}, "threads", TOP, "threads", "context"),
    ({"require": "sharedmem", "backend": "threads"}, "cluster", TOP, "threads", "explicit"),
    # rule 6: one worker runs inline, unless on a cluster
    ({"n_jobs": 1}, None, TOP, "sequential", "n_jobs=1"),
    ({"n_jobs": 1, "backend": "processes"}, None, TOP, "sequential", "n_jobs=1"),
    ({"n_jobs": 1}, "threads", TOP, "sequential", "n_jobs=1"),
    ({"n_jobs": 1}, "cluster", TOP, "cluster", "context"),
    ({"n_jobs": None}, None, TOP, "sequential", "n_jobs=1"),
    ({"backend": "sequential", "n_jobs": 4}, None, TOP, "sequential", "explicit"),
    # ... and with a timeout, on a worker the caller can stop waiting for
    ({"n_jobs": 1, "timeout": 2.0}, None, TOP, "processes", "default"),
    ({"n_jobs": 1, "timeout": 2.0}, "threads", TOP, "threads", "n_jobs=1"),
    ({"n_jobs": 1, "timeout": 2.0, "prefer": "threads"}, None, TOP, "threads", "n_jobs=1"),
    ({"n_jobs": 1, "timeout": 2.0, "backend": "sequential"}, None, TOP, "sequential", "explicit"),
    # rule 7: nesting; the outer context does not pick a nested call's backend
    ({"n_jobs": -1}, "processes", NESTED_4, "threads", "nested"),
    ({"n_jobs": -1}, "processes", NESTED_1, "sequential", "nested"),
    ({"n_jobs": -1}, None, NESTED_4, "threads", "nested"),
    ({"n_jobs": -1, "prefer": "processes"}, None, NESTED_4, "threads", "nested"),
    ({"n_jobs": -1}, "cluster", NESTED_4, "cluster", "context"),
    # ... a nested call with one worker is inline even on a cluster: it is there already
    ({"n_jobs": -1}, "cluster", NESTED_1, "sequential", "n_jobs=1"),
    ({"n_jobs": 2}, "cluster", NESTED_1, "cluster", "context"),
    ({"n_jobs": -1, "backend": "processes"}, None, NESTED_4, "processes", "explicit"),
    ({"n_jobs": -1, "require": "sharedmem"}, "processes", NESTED_4, "threads", "require"),
]


@pytest.mark.parametrize(("hints", "context", "nesting", "backend", "rule"), TABLE)
def test_table(
    hints: dict[str, object], context: str | None, nesting: Nesting, backend: str, rule: str
) -> None:
    decision = run(**hints, context=context, nesting=nesting)  # type: ignore[arg-type]
    assert (decision.backend, decision.rule) == (backend, rule), str(decision)


def test_context_set_inside_the_task_applies_to_nested_calls() -> None:
    decision = run(n_jobs=-1, context="processes", context_level=1, nesting=NESTED_4)
    assert (decision.backend, decision.rule) == ("processes", "context")


def test_explicit_process_backend_with_sharedmem_is_a_contradiction() -> None:
    with pytest.raises(ValueError, match="contradict"):
        run(backend="processes", require="sharedmem")
    with pytest.raises(ValueError, match="contradict"):
        run(backend="cluster", require="sharedmem")


@pytest.mark.parametrize(
    ("n_jobs", "cores", "workers"),
    [(-1, 8, 8), (-2, 8, 7), (-8, 8, 1), (-20, 8, 1), (3, 8, 3), (16, 8, 16), (-1, 1, 1)],
)
def test_n_jobs_arithmetic(n_jobs: int, cores: int, workers: int) -> None:
    decision = run(n_jobs=n_jobs, cores=cores, backend="threads")
    assert decision.n_jobs == workers


def test_n_jobs_from_context_and_budget() -> None:
    assert run(n_jobs=None, context_n_jobs=-1, cores=8, backend="threads").n_jobs == 8
    # Inside a task with a budget of 4 cores, -1 means 4, not the machine's 8.
    assert run(n_jobs=-1, cores=8, nesting=NESTED_4).n_jobs == 4
    # An explicit count is honoured even inside a task.
    assert run(n_jobs=3, cores=8, nesting=NESTED_1, backend="threads").n_jobs == 3


# Rule 8, the table of README's "How many workers": call's n_jobs x user's n_jobs x
# backend (the call's own or the user's) -> (workers, where n_jobs came from).
N_JOBS_TABLE = [
    # the call's n_jobs wins everywhere
    (3, None, "threads", 3, "the call's argument"),
    (3, 5, "processes", 3, "the call's argument"),
    (-1, None, "cluster", 8, "the call's argument"),
    (1, 4, "cluster", 1, "the call's argument"),
    # else the user's
    (None, 4, "threads", 4, "parallel_config"),
    (None, 4, "cluster", 4, "parallel_config"),
    (None, -2, "processes", 7, "parallel_config"),
    # set nowhere: 1 (joblib's default), but the whole of a cluster
    (None, None, "processes", 1, "set nowhere: 1"),
    (None, None, "threads", 1, "set nowhere: 1"),
    (None, None, "cluster", 8, "the whole cluster"),
]


@pytest.mark.parametrize(("call", "user", "backend", "workers", "why"), N_JOBS_TABLE)
@pytest.mark.parametrize("whose", ["call", "user"])
def test_how_many_workers(
    call: int | None, user: int | None, backend: str, workers: int, why: str, whose: str
) -> None:
    where = {"backend": backend} if whose == "call" else {"context": backend}
    decision = run(n_jobs=call, context_n_jobs=user, cores=8, **where)  # type: ignore[arg-type]
    assert decision.n_jobs == workers
    assert why in decision.reasons[0], decision


def test_n_jobs_set_nowhere_inside_a_cluster_task_counts_the_task_budget() -> None:
    # Reentrant cluster kept inside its own task: -1 is the task's budget, here 1 core,
    # so the nested call runs inline in the task.
    inside = Nesting(level=1, budget=1, parent="'cluster' with 2 workers")
    decision = run(n_jobs=None, context="cluster", nesting=inside)
    assert (decision.backend, decision.n_jobs) == ("sequential", 1)


@pytest.mark.parametrize(
    ("workers", "cores", "inner"), [(2, 8, 4), (8, 8, 1), (3, 8, 2), (16, 8, 1)]
)
def test_inner_budget_splits_the_cores(workers: int, cores: int, inner: int) -> None:
    assert run(n_jobs=workers, cores=cores, backend="processes").inner_budget == inner


def test_an_explicit_inner_n_jobs_over_the_budget_is_kept_and_flagged() -> None:
    decision = run(n_jobs=3, nesting=NESTED_1)
    assert (decision.backend, decision.n_jobs, decision.oversubscribed) == ("threads", 3, True)
    assert "oversubscribed" in str(decision)
    assert not run(n_jobs=-1, nesting=NESTED_4).oversubscribed
    assert not run(n_jobs=16, cores=8).oversubscribed  # top level: the user's own choice


def test_inline_keeps_the_budget_for_its_tasks() -> None:
    assert run(n_jobs=1, cores=8).inner_budget == 8


def test_reasons_name_what_was_overridden() -> None:
    text = str(run(prefer="processes", require="sharedmem", context="cluster"))
    assert "require='sharedmem'" in text
    assert "'cluster'" in text
    text = str(run(prefer="threads", context="processes"))
    assert "beats prefer='threads'" in text
    text = str(run(n_jobs=-1, context="processes", nesting=NESTED_4))
    assert "budget of 4 cores" in text
    assert "does not pick" in text


BACKENDS = [None, "sequential", "threads", "processes", "cluster"]


@pytest.mark.parametrize(
    ("backend", "prefer", "require", "context", "nesting"),
    list(
        itertools.product(
            BACKENDS,
            [None, "threads", "processes"],
            [None, "sharedmem"],
            [None, "threads", "processes", "cluster"],
            [TOP, NESTED_1, NESTED_4],
        )
    ),
)
def test_invariants_over_every_combination(
    backend: str | None,
    prefer: str | None,
    require: str | None,
    context: str | None,
    nesting: Nesting,
) -> None:
    """Properties that hold for each of the 360 combinations of hints, context and nesting."""
    kwargs = {"backend": backend, "prefer": prefer, "require": require, "n_jobs": -1}
    if require and backend is not None and not CAPS[backend].shared_memory:
        with pytest.raises(ValueError, match="contradict"):
            run(**kwargs, context=context, nesting=nesting)  # type: ignore[arg-type]
        return
    decision = run(**kwargs, context=context, nesting=nesting)  # type: ignore[arg-type]
    caps = CAPS[decision.backend]
    assert decision.reasons, "a decision always gives its reasons"
    assert decision.n_jobs >= 1
    if require:
        assert caps.shared_memory, "require='sharedmem' always gets shared memory"
    if caps.inline:
        assert decision.n_jobs == 1
    if backend is not None and decision.backend != "sequential":
        assert decision.backend == backend, "an explicit backend is taken as it is"
    if nesting.level and backend is None and context in ("threads", "processes"):
        assert decision.backend != "processes", "the outer context does not pick nested calls"
    if nesting.level == 0 and backend is None and not require and context is not None:
        assert decision.backend in (context, "sequential"), "the user's context beats prefer"
    if decision.nesting_level:
        cores = nesting.budget or 1
        assert decision.n_jobs <= cores or backend is not None or context == "cluster"
