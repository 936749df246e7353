"""The task-stream timeline: records on every backend, insights, pictures, a real browser."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import parlay
from parlay import Parallel, delayed, parallel_config
from parlay.testing import nested_sum, raise_at, square

IN_OTHER_PROCESSES = {"processes", "dask", "ray"}


def nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def test_records_every_task_on_every_backend(backend: str) -> None:
    with parlay.timeline() as tl:
        out = Parallel(n_jobs=2, backend=backend)(delayed(nap)(i, 0.05) for i in range(12))
    assert out == list(range(12))
    records = tl.records
    assert sorted(r.task for r in records) == list(range(12)), "each task recorded once"
    assert [r.start for r in records] == sorted(r.start for r in records)
    assert {r.backend for r in records} == {backend}
    assert {r.status for r in records} == {"ok"}
    assert {r.function for r in records} == {f"{__name__}.nap"}
    for r in records:
        assert r.start <= r.end
        assert r.end - r.start >= 0.04, "a task's time is its own sleep"
        # Not checked: submitted <= start. The runner stamps `submitted` once submit()
        # returns, after an inline batch has run (and racing a thread that starts it).
    pids = {r.pid for r in records}
    if backend in IN_OTHER_PROCESSES:
        assert os.getpid() not in pids
    else:
        assert pids == {os.getpid()}
    workers = {(r.host, r.pid, r.thread) for r in records}
    if backend == "dask":
        # The scheduler places tasks; a worker just restarted (by a test that kills one)
        # may get none of twelve.
        assert 1 <= len(workers) <= 2
    else:
        assert len(workers) == (1 if backend == "sequential" else 2)
    [call] = tl.calls
    assert call.call.backend == backend
    assert call.error is None
    assert call.end is not None
    assert call.end >= max(r.end for r in records)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_failed_tasks_are_marked(backend: str) -> None:
    with parlay.timeline() as tl:
        out = Parallel(n_jobs=2, backend=backend, return_exceptions=True)(
            delayed(raise_at)(i, 3) for i in range(6)
        )
        with pytest.raises(ValueError, match="failed on purpose"):
            Parallel(n_jobs=2, backend=backend, batch_size=1)(
                delayed(raise_at)(i, 1) for i in range(4)
            )
    assert isinstance(out[3], ValueError)
    first, second = tl.calls
    status = {r.task: r.status for r in tl.records if r.call_id == first.call.call_id}
    assert status == {i: "error" if i == 3 else "ok" for i in range(6)}
    assert first.error is None
    assert isinstance(second.error, ValueError)
    failed = [r for r in tl.records if r.call_id == second.call.call_id and r.status == "error"]
    assert [r.task for r in failed] == [1]
    assert "failed: ValueError" in tl.summary()


def test_nested_calls_on_threads_are_recorded_with_their_level() -> None:
    with parlay.timeline() as tl:
        out = Parallel(n_jobs=2, backend="threads")(delayed(nested_sum)(x, -1) for x in range(3, 7))
    assert [total for total, _, _ in out] == [sum(i * i for i in range(x)) for x in range(3, 7)]
    levels = sorted(c.call.nesting_level for c in tl.calls)
    assert levels == [0, 1, 1, 1, 1]
    inner = {c.call.call_id for c in tl.calls if c.call.nesting_level == 1}
    counts = sorted(sum(r.call_id == i for r in tl.records) for i in inner)
    assert counts == [3, 4, 5, 6]
    assert {r.function for r in tl.records if r.call_id in inner} == {"parlay.testing.square"}
    assert "nesting level 1" in tl.summary()


def test_joblib_and_scikit_learn_calls_through_the_bridge_are_recorded() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.utils.parallel import Parallel as SkParallel
    from sklearn.utils.parallel import delayed as sk_delayed

    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    with parallel_config(backend="threads"), parlay.timeline() as tl:
        out = SkParallel(n_jobs=2)(sk_delayed(square)(i) for i in range(5))
        scores = cross_val_score(LogisticRegression(), X, y, cv=3, n_jobs=2)
    assert out == [i * i for i in range(5)]
    assert len(scores) == 3
    bridged = [c for c in tl.calls if c.call.via == "joblib"]
    assert len(bridged) == 2
    assert all(c.end is not None and c.error is None for c in bridged)
    by_call = {
        c.call.call_id: [r for r in tl.records if r.call_id == c.call.call_id] for c in bridged
    }
    squares, fits = by_call.values()
    assert {r.function for r in squares} == {"parlay.testing.square"}
    assert len(fits) >= 1
    assert all(r.backend == "threads" and r.start <= r.end for r in squares + fits)
    # A record a joblib batch, numbered by its first joblib task.
    for records, n_tasks in ((squares, 5), (fits, 3)):
        firsts = sorted(r.task for r in records)
        assert firsts[0] == 0
        assert len(set(firsts)) == len(firsts)
        assert firsts[-1] < n_tasks
    assert "via joblib" in tl.summary()


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_insights_add_up(backend: str) -> None:
    with parlay.timeline() as tl:
        Parallel(n_jobs=2, backend=backend, batch_size=1)(delayed(nap)(i, 0.05) for i in range(8))
    rows = tl.insights()
    assert {r.backend for r in rows} == {backend}
    assert sum(r.n_tasks for r in rows) == 8
    computing = sum(r.computing for r in rows)
    # Sleeps of 8 x 0.05 s; generous above, for a loaded machine.
    assert 0.39 <= computing <= 1.5
    for r in rows:
        assert r.moving_data >= 0
        assert r.waiting >= 0
        assert r.computing + r.moving_data + r.waiting == pytest.approx(r.span, abs=1e-6)
        assert 0 < r.share(r.computing) <= 1
        if backend == "threads":
            assert r.moving_data == 0
    text = tl.summary()
    assert f"{backend}, 2 workers, 8 tasks" in text
    for heading in ("worker", "computing", "moving data", "waiting"):
        assert heading in text
    for r in rows:
        assert r.worker in text


def test_records_as_a_dataframe() -> None:
    pytest.importorskip("pandas")
    with parlay.timeline() as tl:
        Parallel(n_jobs=2, backend="threads")(delayed(square)(i) for i in range(10))
    frame = tl.to_dataframe()
    assert len(frame) == 10
    assert list(frame.columns)[:3] == ["call_id", "backend", "task"]
    assert (frame["duration"] >= 0).all()
    assert sorted(frame["task"]) == list(range(10))


def small_timeline() -> parlay.Timeline:
    with parlay.timeline() as tl:
        Parallel(n_jobs=2, backend="threads")(delayed(nap)(i, 0.01) for i in range(6))
        Parallel(n_jobs=2, backend="threads", return_exceptions=True)(
            delayed(raise_at)(i, 2) for i in range(4)
        )
    return tl


def test_save_writes_a_page_and_pictures(tmp_path: Path) -> None:
    pytest.importorskip("bokeh")
    pytest.importorskip("matplotlib")
    tl = small_timeline()
    page = tl.save(tmp_path / "run.html")
    text = page.read_text(encoding="utf-8")
    assert "Bokeh" in text
    assert "<script src=" not in text.replace(" ", "").lower(), "the page loads nothing"
    assert f"{__name__}.nap" in text
    assert "How each worker spent each call" in text
    assert tl.save(tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in tl.save(str(tmp_path / "run.svg")).read_bytes()[:1000]
    assert tl.save(tmp_path / "run.PDF").read_bytes().startswith(b"%PDF")


def test_an_empty_timeline_saves_an_empty_page(tmp_path: Path) -> None:
    pytest.importorskip("bokeh")
    pytest.importorskip("matplotlib")
    with parlay.timeline() as tl:
        pass
    assert tl.records == []
    assert tl.calls == []
    assert tl.insights() == []
    assert tl.summary() == "no parallel call was recorded"
    assert "no task recorded" in tl.save(tmp_path / "empty.html").read_text(encoding="utf-8")
    assert tl.save(tmp_path / "empty.png").read_bytes().startswith(b"\x89PNG")


def test_save_names_the_suffixes_it_knows(tmp_path: Path) -> None:
    tl = parlay.Timeline()
    with pytest.raises(ValueError, match=r"\.html, \.png, \.svg, \.pdf; got '.*run\.txt'"):
        tl.save(tmp_path / "run.txt")
    with pytest.raises(ValueError, match="one of"):
        tl.save(tmp_path / "run")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("modules", "make", "fix"),
    [
        (["bokeh", "bokeh.embed"], lambda tl, p: tl.save(p / "r.html"), "parlay\\[timeline\\]"),
        (["matplotlib", "matplotlib.figure"], lambda tl, p: tl.save(p / "r.png"), "timeline"),
        (["matplotlib", "matplotlib.figure"], lambda tl, p: tl.plot(), "parlay\\[timeline\\]"),
        (["pandas"], lambda tl, p: tl.to_dataframe(), "pip install pandas"),
    ],
)
def test_a_missing_library_names_the_fix(
    modules: list[str], make, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=fix):
        make(parlay.Timeline(), tmp_path)


def test_importing_parlay_loads_no_plotting_library() -> None:
    import subprocess

    code = (
        "import sys, parlay; "
        "print(sorted(m for m in ('bokeh', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium executable here (CI installs Debian's chromium package)")


# Flags for a sandboxed CI machine without network: no GPU, no background traffic.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.timeout(90)
def test_the_page_renders_its_bars_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("bokeh")
    pytest.importorskip("PIL")
    playwright = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    tl = small_timeline()
    page_path = tl.save(tmp_path / "run.html")
    n_records = len(tl.records)
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 600},
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_path.as_uri())
            page.wait_for_function(
                "() => window.Bokeh && Bokeh.documents.length > 0", timeout=30_000
            )
            glyphs = page.evaluate(
                "() => Bokeh.documents[0].get_model_by_name('tasks').data_source.data.task.length"
            )
            assert glyphs == n_records
            # Bokeh draws after the document loads: wait until the first function's colour
            # (the bars of `nap`) shows up on screen.
            blue = (0x1F, 0x77, 0xB4)
            deadline = time.monotonic() + 30
            shot = _pixels(page.screenshot())
            while not _find(shot, blue) and time.monotonic() < deadline:
                page.wait_for_timeout(200)
                shot = _pixels(page.screenshot())
            assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 2, "the screenshot is blank"
            assert _find(shot, blue), "no task bar was drawn"
            # Hovering a bar shows the task.
            x, y = _find(shot, blue)[0]
            page.mouse.move(x + 2, y + 2)
            page.get_by_text("duration:").wait_for(state="visible", timeout=10_000)
            assert page.get_by_text(f"{__name__}.nap").count() >= 1
            assert errors == []
        finally:
            context.close()


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _find(pixels: np.ndarray, colour: tuple[int, int, int]) -> list[tuple[int, int]]:
    """The (x, y) places of `colour` in a screenshot."""
    return [(int(x), int(y)) for y, x in np.argwhere((pixels == colour).all(axis=-1))]
