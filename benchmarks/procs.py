"""Process-tree helpers and the memory sampler (psutil).

* :func:`kill_tree`, and :func:`kill_all` over :func:`marked` and
  :func:`session_members`, make sure no worker outlives its cell, whether the
  cell finished, hung, or crashed.
* :class:`MemorySampler` runs a daemon thread that samples, every few
  milliseconds, the summed RSS and thread count of this process, all its
  descendants and the rest of its session, and the machine-wide used memory
  (``total - available``), and keeps the peaks.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import psutil

#: Environment variable set on every cell; all its descendants inherit it,
#: which lets the runner find and kill strays that escaped the process tree.
TOKEN_VAR = "PARLAY_BENCH_CELL_TOKEN"

MB = 1024 * 1024
#: Shortest measured window over which other processes' CPU use is estimated.
MIN_CPU_WINDOW_S = 0.5
#: How often the memory sampler looks for the cell's descendants and session members.
#: Looking is the costly part of a sample (psutil reads every process of the machine:
#: ~1.7 ms of CPU here): done every 20 ms, it slowed the parallel systems far more than
#: serial's single core (W6 sampled against unsampled: serial 6.28 / 6.18 s, parlay-dask
#: 3.75 / 3.42 s), which biased every ratio to serial.
SESSION_REFRESH_S = 0.5


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """All living descendants of ``pid`` (default: this process)."""
    try:
        found: list[psutil.Process] = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return found


def own_session() -> int | None:
    """This process's session id if it leads its session (as every cell does), else None.

    A cell started from a shell shares the shell's session: then the session
    says nothing about which processes are the cell's, and None is returned.
    """
    sid = os.getsid(0)
    return sid if sid == os.getpid() else None


def session_members(sid: int) -> list[psutil.Process]:
    """Every process in session ``sid`` except this one.

    A cell leads a session of its own, and whatever it starts stays in that
    session unless it calls ``setsid`` (parlay's Dask host does; it and its
    workers are still descendants). This catches a process that was
    re-parented to init, like a daemon left by its dead parent, and those of
    Ray's processes that do not inherit the cell's environment.
    """
    return others_where(lambda proc: os.getsid(proc.pid) == sid)


def others_where(keep: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """Every process but this one for which ``keep`` holds (skipping vanished ones)."""
    me = os.getpid()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if keep(proc):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def tree(root: psutil.Process, extra: Sequence[psutil.Process] = ()) -> list[psutil.Process]:
    """``root``, its living descendants, and the processes of ``extra`` not among them."""
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    seen = {proc.pid for proc in procs}
    return procs + [proc for proc in extra if proc.pid not in seen]


def usage(procs: Sequence[psutil.Process], cpu: dict[psutil.Process, float]) -> tuple[int, int]:
    """Summed RSS in bytes and summed thread count of ``procs``.

    Records each one's CPU seconds in ``cpu``.
    The CPU time of a process includes its reaped children's. Kept per
    process, so a process that dies later still counts with its last value
    (Ray's raylet ignores SIGCHLD: its dead workers' CPU time is lost to
    ``children_user``).
    """
    total = threads = 0
    for proc in procs:
        try:
            with proc.oneshot():
                rss = proc.memory_info().rss
                t = proc.cpu_times()
                n = proc.num_threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += rss
        threads += n
        cpu[proc] = t.user + t.system + t.children_user + t.children_system
    return total, threads


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


_SHM = "/dev/shm"
# Names that joblib, loky and parlay give their /dev/shm entries, with the owner's pid.
_SHM_PREFIXES = ("joblib_memmapping_folder_{}_", "sem.loky-{}-", "parlay-{}-")


def remove_shm_of(pid: int) -> list[str]:
    """Remove the /dev/shm entries a dead process left (a killed cell's tracker died too).

    The sweep kills a cell's whole process group, loky's resource tracker included, so
    the segments and semaphores the tracker would have removed stay. Returns their names.
    """
    if psutil.pid_exists(pid) or not os.path.isdir(_SHM):
        return []
    prefixes = tuple(prefix.format(pid) for prefix in _SHM_PREFIXES)
    removed = []
    for name in os.listdir(_SHM):
        if name.startswith(prefixes):
            path = os.path.join(_SHM, name)
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                continue
            removed.append(name)
    return removed


def marked(token: str) -> list[psutil.Process]:
    """Every process whose environment carries ``TOKEN_VAR=token``.

    This finds workers that were re-parented to init after their cell died.
    """
    return others_where(lambda proc: proc.environ().get(TOKEN_VAR) == token)


def name_of(proc: psutil.Process) -> str:
    """The process's name, or ``?`` if it is gone or hidden."""
    try:
        return str(proc.name())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


class MemorySampler:
    """Sample tree RSS, tree thread count and machine memory in a background thread.

    Use as a context manager around the measured calls; the baseline is taken
    on entry, so inputs prepared before entering do not count as "extra".
    With ``interval <= 0`` no thread runs and only the entry and exit values
    count. It also estimates how much CPU other processes on the machine
    used meanwhile (``foreign_cpu_share``), which flags disturbed cells.

    The tree is this process and its descendants plus (in a cell that leads
    its session) the other processes of the session, looked up at the start,
    at the end and every :data:`SESSION_REFRESH_S` seconds: so the
    daemons of a cluster engine count even if they are not descendants.
    The thread count of a sample is summed over the same processes and
    leaves the sampler's own thread out.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._root = psutil.Process(os.getpid())
        self._sid = own_session()
        self._session: list[psutil.Process] = []
        self._looked_at = -float("inf")
        self._tree: list[psutil.Process] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        self.tree_baseline = 0
        self.tree_peak = 0
        self.machine_baseline = 0
        self.machine_peak = 0
        self.processes_max = 0
        self.threads_baseline = 0
        self.threads_peak = 0
        self.names: dict[int, str] = {}
        self._cpu_start = (0.0, 0.0)
        self._cpu0: dict[psutil.Process, float] = {}
        self._cpu: dict[psutil.Process, float] = {}
        self.foreign_cpu_share: float | None = None

    def _procs(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._looked_at >= SESSION_REFRESH_S:
            if self._sid is not None:
                self._session = session_members(self._sid)
            self._tree, self._looked_at = tree(self._root, self._session), now
        procs = self._tree
        for proc in procs:
            if proc.pid not in self.names:
                self.names[proc.pid] = name_of(proc)
        self.processes_max = max(self.processes_max, len(procs))
        return procs

    def _sample(self) -> None:
        tree_now, threads = usage(self._procs(), self._cpu)
        if self._thread is not None and threading.current_thread() is self._thread:
            threads -= 1  # the sampler's own thread is not the workload's
        used = machine_used()
        self.tree_peak = max(self.tree_peak, tree_now)
        self.threads_peak = max(self.threads_peak, threads)
        self.machine_peak = max(self.machine_peak, used)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> MemorySampler:
        """Take the baseline and start sampling."""
        self._looked_at = -float("inf")  # look for the processes now
        self.tree_baseline, self.threads_baseline = usage(self._procs(), self._cpu0)
        self.tree_peak, self.threads_peak = self.tree_baseline, self.threads_baseline
        self._cpu = dict(self._cpu0)
        self.machine_baseline = self.machine_peak = machine_used()
        self._cpu_start = (time.monotonic(), machine_busy())
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
        self._looked_at = -float("inf")
        self._sample()
        wall0, busy0 = self._cpu_start
        wall = time.monotonic() - wall0
        ours = sum(v - self._cpu0.get(p, 0.0) for p, v in self._cpu.items())
        foreign = (machine_busy() - busy0) - ours
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

    def report(self) -> dict[str, Any]:
        """Peaks and baselines in MB, the number of samples, the processes seen."""
        return {
            "tree_rss_baseline_mb": round(self.tree_baseline / MB, 1),
            "tree_rss_peak_mb": round(self.tree_peak / MB, 1),
            "tree_rss_peak_extra_mb": round((self.tree_peak - self.tree_baseline) / MB, 1),
            "machine_used_baseline_mb": round(self.machine_baseline / MB, 1),
            "machine_used_peak_extra_mb": round(
                (self.machine_peak - self.machine_baseline) / MB, 1
            ),
            "samples": self.samples,
            "processes_max": self.processes_max,
            "threads_baseline": self.threads_baseline,
            "threads_peak": self.threads_peak,
            "process_names": sorted(set(self.names.values())),
            "foreign_cpu_share": (
                None if self.foreign_cpu_share is None else round(self.foreign_cpu_share, 3)
            ),
        }
