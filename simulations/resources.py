"""RSS and CPU of the server's processes during a run (psutil).

Which processes are the server's:
- a RayServer the harness started: its named Ray actors (`<cluster>-host-<i>`, `<cluster>-gw-<g>`),
  looked up in Ray's actor table (the table has their pids). Re-resolved every few seconds, so a
  host that Ray restarted after a kill is followed to its new process.
- a server given by --url on this machine: the process listening on its port and, when that is a
  Ray worker (`ray::GatewayActor`), the other `ray::HostActor` / `ray::GatewayActor` workers of the
  same raylet.
- PostgreSQL and Redis, when the harness knows their pids (its own redis-server; the PostgreSQL
  backends are summed as one "postgres" line).
The load generator itself ("harness") is sampled too: it shares the machine's cores with the server.
CPU % is psutil's: 100 = one core fully busy. `cpu_s` is the CPU time (user + system) a label's
processes used between their first and their last sample: divided by the operations of the same
window it is the CPU per operation, which shared-machine noise moves much less than latency.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import psutil

log = logging.getLogger("syncopate.sim.resources")


def ray_server_pids(server) -> dict[str, int]:
    """label -> pid for the actors of a RayServer (blocking: call from a thread)."""
    from ray._private.state import state
    out: dict[str, int] = {}
    prefix = f"{server.cluster}-"
    for info in state.actor_table(None).values():
        name = info.get("Name") or ""
        if name.startswith(prefix) and info.get("State") == "ALIVE" and info.get("Pid"):
            label = name[len(prefix):].replace("gw-", "gateway-")
            out[label] = int(info["Pid"])
            out.update(store_children(label, int(info["Pid"])))
    return out


def store_children(label: str, pid: int) -> dict[str, int]:
    """A host's SQLite store process (storage/sqlite_process.py): part of the server's cost."""
    out: dict[str, int] = {}
    try:
        for child in psutil.Process(pid).children():
            if "storage.sqlite_process" in " ".join(child.cmdline()):
                out[f"{label}-store"] = child.pid
    except psutil.Error:
        pass
    return out


def listening_pids(port: int) -> dict[str, int]:
    """label -> pid for the process listening on `port` here, and its Ray siblings."""
    out: dict[str, int] = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return out
    pids = {c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            title = (p.cmdline() or [p.name()])[0]
        except psutil.Error:
            continue
        out[title.split()[0].replace("ray::", "") + f"-{pid}"] = pid
        if title.startswith("ray::"):
            try:
                parent = p.parent()
                for sib in parent.children() if parent else []:
                    t = (sib.cmdline() or [""])[0]
                    if t.startswith(("ray::HostActor", "ray::GatewayActor")):
                        out[t.split()[0].replace("ray::", "") + f"-{sib.pid}"] = sib.pid
            except psutil.Error:
                pass
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (a process gone is left out)."""
    out = {}
    for label, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[label] = t.user + t.system
        except psutil.Error:
            pass
    return out


def dir_bytes(path: str) -> int:
    """Bytes of the files under `path` (a SQLite store's data dir: database, WAL)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def postgres_pids() -> list[int]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if (p.info["name"] or "").startswith("postgres"):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


class ResourceSampler:
    """Samples every `interval_s`; `resolve()` (blocking, run in a thread) maps label -> pid."""

    def __init__(self, resolve: Callable[[], dict[str, int]] | None, *, interval_s: float = 1.0,
                 resolve_every_s: float = 3.0, include_self: bool = True,
                 groups: dict[str, Callable[[], list[int]]] | None = None,
                 clock: Callable[[], float] | None = None, store_bytes: Callable[[], int] | None = None,
                 store_every_s: float = 10.0) -> None:
        self.resolve = resolve
        self.interval_s = interval_s
        self.resolve_every_s = resolve_every_s
        self.include_self = include_self
        self.groups = groups or {}
        self.clock = clock or time.perf_counter
        self.samples: list[dict] = []
        # The store's size on disk beside the processes' memory: a soak's data grows (logs, documents)
        # even with a fixed population; simulations/soak.py reports its slope apart from the verdict.
        self.store_bytes = store_bytes
        self.store_every_s = store_every_s
        self.store_samples: list[dict] = []
        self._next_store = 0.0
        self.server_labels: set[str] = set()
        self._procs: dict[int, psutil.Process] = {}
        self._labels: dict[str, list[int]] = {}
        self._cpu0: dict[int, float] = {}         # pid -> user + system CPU seconds at its first sample
        self._cpu_last: dict[int, float] = {}     # pid -> the same at its last sample
        self._pid_label: dict[int, str] = {}
        self._t0 = 0.0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    def _proc(self, pid: int) -> psutil.Process | None:
        p = self._procs.get(pid)
        if p is None:
            try:
                p = self._procs[pid] = psutil.Process(pid)
                p.cpu_percent(None)       # prime: the first reading is always 0
            except psutil.Error:
                return None
        return p

    async def _refresh(self) -> None:
        labels: dict[str, list[int]] = {}
        if self.resolve is not None:
            try:
                found = await asyncio.get_running_loop().run_in_executor(None, self.resolve)
                for label, pid in found.items():
                    labels[label] = [pid]
                    self.server_labels.add(label)
            except Exception as exc:  # noqa: BLE001 - keep sampling with the last known pids
                log.debug("resolving server pids failed: %s", exc)
                labels.update({k: v for k, v in self._labels.items() if k in self.server_labels})
        for label, fn in self.groups.items():
            try:
                labels[label] = list(fn())
            except (OSError, psutil.Error) as exc:
                log.debug("pids of %s: %s", label, exc)
        if self.include_self:
            labels["harness (load generator)"] = [os.getpid()]
        self._labels = labels

    def sample(self, t: float) -> None:
        for label, pids in self._labels.items():
            rss = anon = 0
            cpu = 0.0
            alive = []
            for pid in pids:
                p = self._proc(pid)
                if p is None:
                    continue
                try:
                    with p.oneshot():
                        mem = p.memory_info()
                        rss += mem.rss
                        # resident pages not backed by a file: the heap (what a leak grows); the rest
                        # (`shared`: mapped libraries and files, e.g. SQLite's) is page cache
                        anon += mem.rss - getattr(mem, "shared", 0)
                        cpu += p.cpu_percent(None)
                        ct = p.cpu_times()
                    used = ct.user + ct.system
                    self._cpu0.setdefault(pid, used)
                    self._cpu_last[pid] = used
                    self._pid_label[pid] = label
                    alive.append(pid)
                except psutil.Error:
                    self._procs.pop(pid, None)
            if alive:
                self.samples.append({"t": round(t, 3), "label": label, "pids": alive,
                                     "rss_mb": round(rss / 2**20, 1), "anon_mb": round(anon / 2**20, 1),
                                     "cpu_pct": round(cpu, 1)})

    async def run(self, t0: float | None = None) -> None:
        t0 = self._t0 = self.clock() if t0 is None else t0
        next_resolve = 0.0
        while not self._stop.is_set():
            now = self.clock()
            if now >= next_resolve:
                await self._refresh()
                next_resolve = now + self.resolve_every_s
            t = self.clock() - t0
            await asyncio.get_running_loop().run_in_executor(None, self.sample, t)   # /proc reads
            if self.store_bytes is not None and t >= self._next_store:
                self._next_store = t + self.store_every_s
                try:
                    size = await asyncio.get_running_loop().run_in_executor(None, self.store_bytes)
                    self.store_samples.append({"t": round(t, 3), "mb": round(size / 2**20, 2)})
                except OSError as exc:
                    log.debug("store size: %s", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    def start(self, t0: float | None = None) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(t0))

    async def stop(self) -> dict:
        self._stop.set()
        if self._task is not None:
            await self._task
            # one last sample at the stop, so cpu_s covers the window up to the end of the load
            await asyncio.get_running_loop().run_in_executor(None, self.sample, self.clock() - self._t0)
        return self.summary()

    def summary(self) -> dict:
        by: dict[str, list[dict]] = {}
        for s in self.samples:
            by.setdefault(s["label"], []).append(s)
        procs = {}
        for label, ss in by.items():
            # the first CPU reading of a process is a priming 0: skip it when there are more
            cpu = [s["cpu_pct"] for s in ss[1:]] or [ss[0]["cpu_pct"]]
            procs[label] = {"pids": sorted({p for s in ss for p in s["pids"]}),
                            "rss_mb_mean": round(sum(s["rss_mb"] for s in ss) / len(ss), 1),
                            "rss_mb_max": max(s["rss_mb"] for s in ss),
                            "cpu_pct_mean": round(sum(cpu) / len(cpu), 1), "cpu_pct_max": max(cpu),
                            "cpu_s": round(sum(self._cpu_last[p] - self._cpu0[p] for p, lb in
                                               self._pid_label.items() if lb == label), 3),
                            "server": label in self.server_labels}
        out = {"interval_s": self.interval_s, "processes": procs, "samples": self.samples}
        if self.samples:     # the window the cpu_s figures cover (seconds of the load's clock)
            out["cpu_window_s"] = [self.samples[0]["t"], self.samples[-1]["t"]]
        if self.store_samples:
            out["store_samples"] = self.store_samples
        server = [v for k, v in procs.items() if k in self.server_labels]
        if server:
            out["server_cpu_pct_mean"] = round(sum(v["cpu_pct_mean"] for v in server), 1)
            # sum of per-process maxima: an upper bound of the total resident set
            out["server_rss_mb_max"] = round(sum(v["rss_mb_max"] for v in server), 1)
        return out
