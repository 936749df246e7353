"""What tasks print, log and warn reaches the caller, on every backend."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

import pytest

from parlay import Parallel, delayed

logger = logging.getLogger("parlay_tests.output")

REMOTE = {"processes", "dask", "ray"}


def chatty(i: int) -> int:
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
    logger.info("info %d", i)
    logger.debug("debug %d", i)
    return i


def chatty_then_fail(i: int) -> int:
    print(f"before failing {i}")
    logger.warning("failing %d", i)
    raise ValueError(f"task {i} failed")


def partial_line(i: int) -> int:
    sys.stdout.write(f"no newline {i}")
    return i


def test_prints_reach_the_callers_streams(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert Parallel(n_jobs=2, backend=backend)(delayed(chatty)(i) for i in range(6)) == list(
        range(6)
    )
    out, err = capsys.readouterr()
    for i in range(6):
        assert re.search(rf"^(\[pid \d+[^\]]*\] )?out {i}$", out, re.MULTILINE), out
        assert re.search(rf"^(\[pid \d+[^\]]*\] )?err {i}$", err, re.MULTILINE), err
    pids = {int(p) for p in re.findall(r"^\[pid (\d+)", out, re.MULTILINE)}
    if backend in REMOTE:
        # Every line is prefixed with the worker process it came from, not this one.
        assert len(re.findall(r"^\[pid \d+", out, re.MULTILINE)) == 6
        assert pids
        assert os.getpid() not in pids
    else:
        # Threads write to this process's own streams, as a loop would: no prefix.
        assert not pids


def test_a_partial_line_ends_with_its_batch(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Parallel(n_jobs=2, backend=backend)(delayed(partial_line)(i) for i in range(2))
    out = capsys.readouterr().out
    assert "no newline 0" in out
    assert "no newline 1" in out
    if backend in REMOTE:
        assert re.search(r"^\[pid \d+[^\]]*\] no newline 0$", out, re.MULTILINE), out


def test_log_records_reach_the_callers_loggers_at_its_levels(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logger.name)
    Parallel(n_jobs=2, backend=backend)(delayed(chatty)(i) for i in range(4))
    records = [r for r in caplog.records if r.name == logger.name]
    messages = [r.getMessage() for r in records]
    # INFO passes the caller's level, DEBUG does not: as with a loop in the caller.
    assert all(m.rsplit(" ", 2)[-2] == "info" for m in messages), messages
    assert sorted(int(m.rsplit(" ", 1)[-1]) for m in messages) == list(range(4))
    assert all(r.levelno == logging.INFO for r in records)
    if backend in REMOTE:
        assert all(re.match(r"\[pid \d+", m) for m in messages), messages
        assert {r.process for r in records} - {os.getpid()}


def test_output_of_a_failing_task_arrives_before_its_error(
    backend: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="task 0 failed"):
        Parallel(n_jobs=1, backend=backend)(delayed(chatty_then_fail)(i) for i in range(1))
    assert "before failing 0" in capsys.readouterr().out
    assert any("failing 0" in r.getMessage() for r in caplog.records if r.name == logger.name)


def warn(i: int) -> int:
    warnings.warn(f"careful with {i}", UserWarning, stacklevel=1)
    return i


def test_warnings_are_seen_by_the_caller(backend: str) -> None:
    with pytest.warns(UserWarning, match="careful with") as seen:
        Parallel(n_jobs=2, backend=backend)(delayed(warn)(i) for i in range(3))
    assert sorted(str(w.message) for w in seen) == [f"careful with {i}" for i in range(3)]


def test_joblib_calls_through_the_bridge_bring_back_output_and_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("sklearn")
    from sklearn.utils.parallel import Parallel as SkParallel
    from sklearn.utils.parallel import delayed as sk_delayed

    import parlay

    with parlay.parallel_config(backend="processes"):
        with pytest.warns(UserWarning, match="careful with") as seen:
            SkParallel(n_jobs=2)(sk_delayed(warn)(i) for i in range(4))
        SkParallel(n_jobs=2)(sk_delayed(chatty)(i) for i in range(4))
    assert sorted(str(w.message) for w in seen) == [f"careful with {i}" for i in range(4)]
    out = capsys.readouterr().out
    assert len(re.findall(r"^\[pid \d+\] out \d$", out, re.MULTILINE)) == 4, out


def test_output_outside_a_task_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """After a batch, the worker's streams write through (routing is per batch)."""
    from parlay import _output

    captured = _output.Captured()
    with _output.capturing(captured):
        print("inside")
    print("outside")
    assert captured.stdout() == "inside\n"
    assert captured.closed
    assert capsys.readouterr().out == "outside\n"


def test_warnings_logged_outside_a_batch_still_reach_last_resort(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's root logger with only parlay's handler still prints warnings as before."""
    from parlay import _output

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(logging, "lastResort", logging.StreamHandler(sys.stderr))
    with _output.capturing(_output.Captured()):
        pass  # installs the handler
    assert root.handlers == [_output._handler]
    logging.getLogger("parlay_tests.outside").warning("outside any batch")
    assert "outside any batch" in capsys.readouterr().err
