"""The benchmark runner's own logic: a grid run in rounds, its cells merged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.run import merge_rounds
from benchmarks.scenarios import W0_CALLS

ROOT = Path(__file__).resolve().parent.parent


def _record(times: list[float], *, threads: int, startup: float) -> dict[str, object]:
    return {
        "workload": "W1",
        "system": "parlay-threads",
        "status": "ok",
        "times_s": times,
        # W1 reports µs per task of 20,000 tasks: a scale of 50 from seconds per call.
        "value": {"median": sorted(times)[len(times) // 2] * 50, "unit": "µs/task"},
        "startup_s": startup,
        "memory": {"threads_peak": threads, "threads_baseline": 3},
        "cell_wall_s": 1.0,
    }


def test_rounds_pool_the_calls_and_keep_the_peaks() -> None:
    merged = merge_rounds(
        [
            _record([0.010, 0.011, 0.012], threads=5, startup=0.2),
            _record([0.020, 0.021, 0.022], threads=7, startup=0.4),
        ]
    )
    assert merged["times_s"] == [0.010, 0.011, 0.012, 0.020, 0.021, 0.022]
    # The median of the six pooled calls, in the cell's own unit and scale.
    assert merged["value"]["median"] == pytest.approx((0.012 + 0.020) / 2 * 50)
    assert merged["value"]["min"] == pytest.approx(0.5)
    assert merged["value"]["unit"] == "µs/task"
    assert merged["memory"] == {"threads_peak": 7, "threads_baseline": 3}
    assert merged["startup_s"] == pytest.approx(0.3)
    assert merged["rounds"] == 2
    assert merged["cell_wall_s"] == 2.0


def test_a_failed_round_is_the_cells_record() -> None:
    ok = _record([0.010], threads=5, startup=0.2)
    hang = {"workload": "W1", "system": "parlay-threads", "status": "hang", "cell_wall_s": 9.0}
    assert merge_rounds([ok, hang]) is hang
    assert merge_rounds([ok]) is ok


@pytest.mark.timeout(120)
def test_the_runner_interleaves_rounds(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "benchmarks.run", "--workloads", "W0",
               "--systems", "serial,parlay-sequential", "--rounds", "2", "--repeat", "2",
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    order = [line.split()[2] for line in done.stderr.splitlines() if line.startswith("[")]
    # The second round runs the grid backwards.
    assert order == ["serial", "parlay-sequential", "parlay-sequential", "serial"]
    results = json.loads(out.read_text())
    assert results["meta"]["rounds"] == 2
    for cell in results["cells"]:
        assert cell["rounds"] == 2
        assert len(cell["times_s"]) == 2 * W0_CALLS  # W0 makes its own number of calls


def test_rounds_must_be_positive() -> None:
    command = [sys.executable, "-m", "benchmarks.run", "--workloads", "W0", "--rounds", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--rounds must be at least 1" in done.stderr


@pytest.mark.parametrize(
    ("runner", "args", "message"),
    [
        ("interleaved", ["W5", "serial"], "give two systems or more"),
        ("interleaved", ["W5", "serial,nope"], "unknown: ['nope']"),
        (
            "interleaved",
            ["W6", "serial,parlay-threads", "--calls", "0"],
            "--calls must be at least 1",
        ),
        ("interleaved", ["W1", "serial,parlay-threads"], "invalid choice: 'W1'"),
        ("interleaved", ["W5", "parlay-ray,joblib-ray"], "cannot share a process"),
        ("floor", ["--engines", "threads,serial"], "give serial first"),
        ("floor", ["--engines", "serial,gpu"], "unknown: ['gpu']"),
        ("floor", ["--rounds", "0"], "--rounds must be at least 1"),
        ("pool_sizes", ["--rounds", "0"], "--rounds must be at least 1"),
        ("pool_sizes", ["--systems", "parlay,nope"], "unknown: ['nope']"),
    ],
)
def test_the_one_process_runners_name_bad_input(runner: str, args: list[str], message: str) -> None:
    command = [sys.executable, "-m", f"benchmarks.{runner}", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


def test_the_floor_runs_w6s_fits() -> None:
    pytest.importorskip("sklearn")
    from benchmarks.floor import jobs
    from benchmarks.scikit import W6_CV, W6_GRID, W6_SAMPLES, dataset

    todo = jobs(dataset(W6_SAMPLES)[0])
    candidates = len(W6_GRID["max_depth"]) * len(W6_GRID["min_samples_leaf"])
    assert len(todo) == candidates * W6_CV
    assert {len(train) for _params, train in todo} == {3000}  # 2 of 3 folds of 4,500 rows


@pytest.mark.timeout(60)
def test_the_memory_sampler_sees_a_process_started_during_the_calls() -> None:
    # The sampler looks for the cell's processes every SESSION_REFRESH_S, not at every
    # sample: a worker started after the baseline must still count, and its memory too.
    from benchmarks.procs import SESSION_REFRESH_S, MemorySampler

    hold = 3 * SESSION_REFRESH_S
    code = (
        "import time; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); "
        f"time.sleep({hold})"
    )
    with MemorySampler(0.02) as sampler:
        baseline = sampler.tree_baseline
        child = subprocess.Popen([sys.executable, "-c", code])
        child.wait(timeout=30)
    assert sampler.processes_max >= 2
    assert sampler.tree_peak - baseline >= 150 << 20, (sampler.tree_peak - baseline) >> 20
