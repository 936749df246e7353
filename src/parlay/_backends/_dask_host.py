"""The process that hosts parlay's embedded Dask LocalCluster.

``python -m parlay._backends._dask_host --workers N --report-fd FD [--threads T]
[--dashboard]`` starts a ``distributed.LocalCluster`` on 127.0.0.1, writes one JSON line
with its scheduler address to file descriptor FD, and keeps it running until its
standard input closes: when parlay shuts it
down, or when the process that started it dies, even by SIGKILL. Then it closes the
cluster and exits, so no worker outlives its user.

Why a process of its own: a LocalCluster's nannies live in the process that creates it.
There they write into ``os.environ`` each time they start a worker (``OMP_NUM_THREADS``,
``PYTHONHASHSEED``, ...), run threads, and make worker processes children of the user's
process. Hosting the cluster apart keeps the user's process as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Run the cluster until standard input closes."""
    parser = argparse.ArgumentParser(prog="python -m parlay._backends._dask_host")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dashboard", action="store_true")
    parser.add_argument("--report-fd", type=int, required=True)
    args = parser.parse_args(argv)

    import dask
    from distributed import LocalCluster

    # A task whose worker dies fails at once (parlay reports WorkerDiedError, as for a
    # process pool) instead of being run again on three more workers, killing each.
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    # distributed sets MALLOC_TRIM_THRESHOLD_ in its workers to hand freed memory back to
    # the OS; any such variable also turns off glibc's adaptive mmap threshold, so every
    # large temporary (a 16 MB sort buffer) becomes a fresh mmap, faulted in page by page.
    # Measured on W3 (np.sort of 2M floats): ~10% slower per task. The embedded cluster
    # lives as long as the user's process and keeps glibc's defaults.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    # A worker's background threads take the GIL from the task's thread: the statistical
    # profiler every 10 ms, the event loop's health tick every 20 ms, the system monitor
    # every 0.5 s. Measured on batches of 10 tree fits (0.35 s): the task's thread waited
    # 25-40 ms for the GIL per batch with distributed's defaults, 6-12 ms without the
    # profiler and with slower ticks; W5 on the embedded cluster ~4% faster. The profiler
    # feeds only the dashboard, so it stays on when the dashboard is asked for.
    dask.config.set(
        {
            "distributed.worker.profile.enabled": args.dashboard,
            "distributed.admin.tick.interval": "200ms",
            "distributed.admin.system-monitor.interval": "2s",
        }
    )
    # A task goes to a worker when one of its threads is free, not earlier. distributed's
    # default (1.1) lets a single-threaded worker hold a second task queued behind the
    # one it runs, placed before anyone knows which worker frees first: a scikit-learn
    # forest's fit through joblib sends single trees and two batches of ~18 trees, and
    # in 4 refits of 10 in W6 both large batches queued on one worker (0.50-0.57 s
    # against 0.40 s). With 1.0: none in 18; W5 3.26 s against 3.34-3.38 s, the other
    # workloads within noise. (Dask still places the first tasks of a task group at
    # once; only the rest wait at the scheduler.) The price is a scheduler round trip
    # (~1 ms here) between two tasks of a worker.
    dask.config.set({"distributed.scheduler.worker-saturation": 1.0})
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=args.threads,
        processes=True,
        host="127.0.0.1",
        # The scheduler serves HTTP (health, metrics) even without the dashboard: on
        # loopback, on a free port, never on 0.0.0.0:8787.
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": args.dashboard},
        silence_logs=logging.ERROR,
    )
    try:
        link = cluster.dashboard_link if args.dashboard else None
        # The address goes through a pipe of its own: standard output stays the user's,
        # where the workers' prints appear, and nobody has to keep reading it.
        with os.fdopen(args.report_fd, "w") as report:
            report.write(json.dumps({"address": cluster.scheduler_address, "dashboard": link}))
            report.write("\n")
        # Until EOF on standard input (parlay closed the pipe, or its process died),
        # keep every worker of the cluster's spec alive.
        loop = cluster.loop
        assert loop is not None
        healer = _Healer(cluster)
        while not select.select([sys.stdin], [], [], HEAL_INTERVAL)[0]:
            loop.add_callback(healer.heal)
        sys.stdin.read()
    finally:
        cluster.close(timeout=10)
    return 0


# Seconds between two checks that the cluster still has all its nannies.
HEAL_INTERVAL = 1.0


# Longest wait between two attempts to start workers that keep failing to start.
HEAL_MAX_BACKOFF = 60.0


class _Healer:
    """Starts again the workers whose nanny is gone: the cluster keeps its size.

    A nanny restarts its worker when the worker process dies (a task's ``os._exit``, the
    OOM killer, parlay restarting a worker that ran past a timeout), but LocalCluster
    never replaces a nanny that has ended, and two things end one: ``SpecCluster``
    closes the nanny of a worker that is absent ``distributed.deploy.lost-worker-timeout``
    (15 s) after it was removed, so a worker that dies again at that moment, while it is
    starting, loses its nanny; and a nanny whose worker dies while starting closes
    itself. Workers killed every few seconds (the dead-worker checks of the test suite)
    left the cluster with none, and every call queued forever. A nanny still closing is
    left to finish (its worker may still hold the name at the scheduler), and a worker
    that keeps failing to start is tried again after 1, 2, 4, ... 60 s, not every second.
    """

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.backoff = 0.0
        self.next_try = 0.0

    def heal(self) -> None:
        """Runs on the cluster's event loop."""
        from distributed.core import Status

        cluster = self.cluster
        if cluster.status != Status.running:
            return  # starting, or closing: its own code is at work
        for name, nanny in list(cluster.workers.items()):
            if nanny.status in (Status.closed, Status.failed):
                del cluster.workers[name]
        if not set(cluster.worker_spec) - set(cluster.workers):
            self.backoff = 0.0  # whole again
            return
        now = time.monotonic()
        if now < self.next_try:
            return
        cluster.scale(len(cluster.worker_spec))  # starts the missing ones
        self.backoff = min(HEAL_MAX_BACKOFF, max(HEAL_INTERVAL, 2 * self.backoff))
        self.next_try = now + self.backoff


if __name__ == "__main__":
    sys.exit(main())
