"""Process-tree helpers and the memory sampler (psutil).

* :func:`kill_tree` and :func:`kill_marked` make sure no worker outlives its
  cell, whether the cell finished, hung, or crashed.
* :class:`MemorySampler` runs a daemon thread that samples, every few
  milliseconds, the summed RSS of this process and all its descendants and
  the machine-wide used memory (``total - available``), and keeps the peaks.
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

import psutil

#: Environment variable set on every cell; all its descendants inherit it,
#: which lets the runner find and kill strays that escaped the process tree.
TOKEN_VAR = "PARLAY_BENCH_CELL_TOKEN"

MB = 1024 * 1024
#: Shortest measured window over which other processes' CPU use is estimated.
MIN_CPU_WINDOW_S = 0.5


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """All living descendants of ``pid`` (default: this process)."""
    try:
        found: list[psutil.Process] = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return found


def tree_rss(root: psutil.Process) -> int:
    """Summed RSS in bytes of ``root`` and all its descendants."""
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


def tree_cpu(root: psutil.Process) -> float:
    """CPU seconds used so far by ``root``, its descendants and their reaped children."""
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (steal included), all cores."""
    t = psutil.cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(t, name, 0.0) for name in fields))


def machine_used() -> int:
    """Machine-wide used memory in bytes, as ``total - available``."""
    vm = psutil.virtual_memory()
    return int(vm.total - vm.available)


def kill_all(procs: list[psutil.Process], wait: float = 3.0) -> int:
    """SIGKILL every process in ``procs`` and wait for them; return how many.

    Kill a parent before its children where possible: an orphan is reaped by
    init at once, while the child of a living but stuck parent stays a
    zombie until that parent reaps it.
    """
    killed = 0
    for proc in procs:
        try:
            proc.kill()
            killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs(procs, timeout=wait)
    return killed


def kill_tree(pid: int | None = None, *, wait: float = 3.0) -> int:
    """Kill all descendants of ``pid`` (default: this process); return how many.

    The descendants are collected before any is killed, so that grandchildren
    are not lost when their parent dies.
    """
    return kill_all(descendants(pid), wait)


def kill_marked(token: str, *, wait: float = 3.0) -> int:
    """Kill every process whose environment carries ``TOKEN_VAR=token``.

    This catches workers that were re-parented to init after their cell died.
    """
    me = os.getpid()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TOKEN_VAR) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return kill_all(found, wait)


class MemorySampler:
    """Sample tree RSS and machine memory in a background thread.

    Use as a context manager around the measured calls; the baseline is taken
    on entry, so inputs prepared before entering do not count as "extra".
    With ``interval <= 0`` no thread runs and only the entry and exit values
    count. It also estimates how much CPU other processes on the machine
    used meanwhile (``foreign_cpu_share``), which flags disturbed cells.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._root = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        self.tree_baseline = 0
        self.tree_peak = 0
        self.machine_baseline = 0
        self.machine_peak = 0
        self._cpu_start = (0.0, 0.0, 0.0)
        self.foreign_cpu_share: float | None = None

    def _sample(self) -> None:
        tree = tree_rss(self._root)
        used = machine_used()
        self.tree_peak = max(self.tree_peak, tree)
        self.machine_peak = max(self.machine_peak, used)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> MemorySampler:
        """Take the baseline and start sampling."""
        self.tree_baseline = self.tree_peak = tree_rss(self._root)
        self.machine_baseline = self.machine_peak = machine_used()
        self._cpu_start = (time.monotonic(), machine_busy(), tree_cpu(self._root))
        self._stop.clear()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="mem-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (one last sample is taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()
        wall0, busy0, ours0 = self._cpu_start
        wall = time.monotonic() - wall0
        foreign = (machine_busy() - busy0) - (tree_cpu(self._root) - ours0)
        capacity = wall * (psutil.cpu_count() or 1)
        # CPU times come in 10 ms clock ticks: too coarse for a short window.
        self.foreign_cpu_share = max(0.0, foreign / capacity) if wall >= MIN_CPU_WINDOW_S else None

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def report(self) -> dict[str, float | int | None]:
        """Peaks and baselines in MB, plus the number of samples taken."""
        return {
            "tree_rss_baseline_mb": round(self.tree_baseline / MB, 1),
            "tree_rss_peak_mb": round(self.tree_peak / MB, 1),
            "tree_rss_peak_extra_mb": round((self.tree_peak - self.tree_baseline) / MB, 1),
            "machine_used_baseline_mb": round(self.machine_baseline / MB, 1),
            "machine_used_peak_extra_mb": round(
                (self.machine_peak - self.machine_baseline) / MB, 1
            ),
            "samples": self.samples,
            "foreign_cpu_share": (
                None if self.foreign_cpu_share is None else round(self.foreign_cpu_share, 3)
            ),
        }
