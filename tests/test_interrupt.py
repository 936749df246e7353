"""Ctrl-C: the call stops promptly and leaves no worker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from parlay import Parallel, delayed

    def work(i, folder):
        open(os.path.join(folder, f"{i}-{os.getpid()}"), "w").close()
        time.sleep(0.3 if sys.argv[1] == "threads" else 60)
        return i

    try:
        Parallel(n_jobs=2, backend=sys.argv[1], batch_size=1)(
            delayed(work)(i, sys.argv[2]) for i in range(40))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(17)
    """
)


@pytest.mark.parametrize("backend", ["processes", "threads", "sequential"])
def test_ctrl_c_stops_the_call_and_leaves_no_process(backend: str, tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "marks"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), backend, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(folder.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(folder.iterdir()), "the tasks never started"
        workers = {int(p.name.split("-")[1]) for p in folder.iterdir()} - {proc.pid}
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 17, err
    assert "interrupted" in out
    assert elapsed < 5, f"the call took {elapsed:.1f} s to stop"
    if backend == "processes":
        assert workers, "the tasks should have run in worker processes"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in workers):
            time.sleep(0.05)
        alive = [p for p in workers if psutil.pid_exists(p)]
        assert not alive, f"worker processes {alive} outlived the interrupted call"
    # Every task that started had started before the signal; none started after it.
    started = len(list(folder.iterdir()))
    assert started < 40
    assert os.getpid() not in workers
