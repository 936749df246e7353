"""Ctrl-C: the call stops promptly and leaves no worker process behind."""

from __future__ import annotations

import importlib.util
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

    if __name__ == "__main__":
        try:
            Parallel(n_jobs=2, backend=sys.argv[1], batch_size=1)(
                delayed(work)(i, sys.argv[2]) for i in range(40))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(17)
    """
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["processes", "threads", "sequential", "dask", "ray"])
def test_ctrl_c_stops_the_call_and_leaves_no_process(backend: str, tmp_path: Path) -> None:
    engine = {"dask": "distributed", "ray": "ray"}.get(backend)
    if engine and importlib.util.find_spec(engine) is None:  # importing ray sets RAY_* vars
        pytest.skip(f"{engine} is not installed")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "marks"
    folder.mkdir()
    # The script starts its own engines: no address of the test session's cluster.
    env = {k: v for k, v in os.environ.items() if k != "PARLAY_DASK_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script), backend, str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(folder.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(folder.iterdir()), "the tasks never started"
        workers = {int(p.name.split("-")[1]) for p in folder.iterdir()} - {proc.pid}
        descendants = psutil.Process(proc.pid).children(recursive=True)
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
    assert elapsed < 15, f"the call took {elapsed:.1f} s to stop"
    if backend not in ("threads", "sequential"):
        assert workers, "the tasks should have run in worker processes"
    # Nothing the script started outlives it: pools, the embedded cluster, Ray.
    _gone, alive = psutil.wait_procs(descendants, timeout=20)
    assert not alive, f"processes outlived the interrupted script: {alive}"
    # Every task that started had started before the signal; none started after it.
    started = len(list(folder.iterdir()))
    assert started < 40
    assert os.getpid() not in workers
