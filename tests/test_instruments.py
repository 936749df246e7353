"""Instruments and the progress bar, on every backend."""

from __future__ import annotations

import logging
import re
import sys
import threading

import pytest

from parlay import BatchReport, CallInfo, Instrument, Parallel, delayed, parallel_config
from parlay.testing import raise_at, square


class Recorder(Instrument):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[CallInfo] = []
        self.done = 0
        self.finished: list[BaseException | None] = []

    def call_started(self, call: CallInfo) -> None:
        self.started.append(call)

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        with self.lock:
            self.done += batch.n_tasks

    def call_finished(self, call: CallInfo, error: BaseException | None) -> None:
        self.finished.append(error)


def test_events_count_every_completed_task(backend: str) -> None:
    recorder = Recorder()
    out = Parallel(n_jobs=2, backend=backend, instruments=[recorder])(
        delayed(square)(i) for i in range(500)
    )
    assert out == [i * i for i in range(500)]
    assert recorder.done == 500
    assert [c.backend for c in recorder.started] == [backend]
    assert recorder.finished == [None]


def test_the_context_attaches_instruments_and_errors_reach_them() -> None:
    recorder = Recorder()
    with (
        parallel_config(instruments=[recorder]),
        pytest.raises(ValueError, match="failed on purpose"),
    ):
        Parallel(n_jobs=2, backend="threads")(delayed(raise_at)(i, 3) for i in range(10))
    assert len(recorder.finished) == 1
    assert isinstance(recorder.finished[0], ValueError)


class Broken(Instrument):
    calls = 0

    def batch_finished(self, call: CallInfo, batch: BatchReport) -> None:
        Broken.calls += 1
        raise RuntimeError("this instrument is broken")


def test_a_failing_instrument_is_detached_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    Broken.calls = 0
    with caplog.at_level(logging.ERROR, logger="parlay._instrument"):
        out = Parallel(n_jobs=2, backend="threads", batch_size=1, instruments=[Broken()])(
            delayed(square)(i) for i in range(20)
        )
    assert out == [i * i for i in range(20)]
    assert Broken.calls == 1, "the instrument was called again after it failed"
    assert "detached" in caplog.text
    assert "this instrument is broken" in caplog.text


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_progress_bar_counts_completed_tasks(
    n_jobs: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    tasks = [delayed(square)(i) for i in range(37)]
    Parallel(n_jobs=n_jobs, backend="threads", progress=True)(tasks)
    err = capsys.readouterr().err
    assert "37/37" in err
    assert "100%" in err
    with parallel_config(progress=True):
        Parallel(n_jobs=n_jobs)(delayed(square)(i) for i in range(12))
    assert "12task" in capsys.readouterr().err  # a generator has no length: a count


def inner_call(i: int) -> int:
    return sum(Parallel(n_jobs=-1, backend="threads")([delayed(square)(j) for j in range(5)]))


def test_nested_calls_on_threads_draw_nested_bars(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    with parallel_config(progress=True):
        out = Parallel(n_jobs=2, backend="threads")([delayed(inner_call)(i) for i in range(3)])
    assert out == [30] * 3
    err = capsys.readouterr().err
    assert "3/3" in err  # the outer bar, left on screen
    # Each inner call drew its own bar, indented under the outer one (its budget of one
    # core makes it run inline).
    assert err.count("\r  sequential:   0%") == 3, err


def test_nested_calls_in_worker_processes_draw_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    with parallel_config(progress=True):
        Parallel(n_jobs=2, backend="processes")([delayed(inner_call)(i) for i in range(3)])
    captured = capsys.readouterr()
    assert "3/3" in captured.err
    # A bar drawn in a worker would come back as that worker's captured output.
    assert "[pid" not in captured.err + captured.out


def test_scikit_learn_calls_through_the_bridge_get_a_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("tqdm")
    pytest.importorskip("sklearn")
    from sklearn.utils.parallel import Parallel as SkParallel
    from sklearn.utils.parallel import delayed as sk_delayed

    recorder = Recorder()
    with parallel_config(backend="threads", progress=True, instruments=[recorder]):
        SkParallel(n_jobs=2)(sk_delayed(square)(i) for i in range(9))
    assert "threads (joblib)" in capsys.readouterr().err
    assert recorder.done == 9  # joblib's tasks, counted inside its batches
    assert [c.via for c in recorder.started] == ["joblib"]
    assert recorder.finished == [None]


def test_rich_progress_shows_every_call_in_one_display(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("rich")
    with parallel_config(progress="rich"):
        out = Parallel(n_jobs=2, backend="threads")([delayed(inner_call)(i) for i in range(3)])
    assert out == [30] * 3
    shown = capsys.readouterr().out
    assert re.search(r"threads .*3/3", shown), shown
    # Nested rows are removed when their call ends; the display is closed after the last.
    from parlay._instrument import RichProgressBar

    assert RichProgressBar._display is None
    assert RichProgressBar._users == 0


@pytest.mark.parametrize(("kind", "extra"), [("tqdm", "progress"), ("rich", "rich")])
def test_a_missing_progress_library_names_the_extra(
    kind: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (kind, f"{kind}.auto", f"{kind}.progress"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=re.escape(f'pip install "parlay[{extra}]"')):
        Parallel(n_jobs=2, backend="threads", progress=kind)(delayed(square)(i) for i in range(3))


def test_bad_instruments_are_rejected() -> None:
    with pytest.raises(TypeError, match="instruments"):
        Parallel(instruments=[object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="progress must be True, False, 'tqdm' or 'rich'"):
        Parallel(progress="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress must be"):
        parallel_config(progress=1)
    with pytest.raises(TypeError, match="instruments"):
        parallel_config(instruments=3)
