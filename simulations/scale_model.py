"""The scale model: the entity logic for large populations in one process (no network), measured,
then projected to a global service.

    .venv/bin/python -m simulations.scale_model [--users 20000] [--devices-per-user 3] [--playlists 2000]
                                                [--ops 3000] [--out DIR] [--live-report DIR/report.json]
    (also: syncopate simulate scale-model ..., syncopate bench scale-model ...)

What runs: one EntityHost (actors/host.py: the same mailbox, output gate and group commit as in a
server) over the in-memory store (storage/memory.py), with the real entity classes (session,
device group, playlist) and the generated catalog. Commands enter through host.enqueue exactly as a
gateway's batch would; effects between entities are dispatched back into the host. What does not
run: websockets, the gateway, Ray, a real store's I/O.

Measured:
1. memory per ACTIVE entity, per kind (RSS growth while N entities are created and kept active,
   divided by N): a session with one connection and --liked tracks, a device group with
   --devices-per-user devices playing a 50-track context, a playlist with --tracks-per-playlist
   entries (a pycrdt document);
2. bytes per PASSIVATED entity (its snapshot as the host stores it) and per log record, per kind;
3. host CPU per operation, per op type (process time of --ops commands / --ops), including packing
   the log entry and the in-memory commit; and CPU per tick (device groups tick every second, sessions
   every 5 s while active);
4. CPU to passivate (snapshot) and to activate (restore + replay) one entity, per kind.

Then the capacity table: hosts, gateways, Redis and PostgreSQL at 500 M monthly users, 100 M
concurrent at peak, 4 B playlists and 37,000 plays/s, from those measurements and the ASSUMPTIONS
below (each printed with the table, each overridable with --assume NAME=VALUE). --live-report takes
a live simulation's report.json to calibrate the gateway's CPU per frame and memory per connection,
and, from a `simulate --nodes N` run, what each machine's Ray node and host processes take before
any entity (ray_node_mb, ray_node_cores, host_actor_idle_mb).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import sys
import time
from pathlib import Path

import psutil

# name: (value, unit, why). Every number the projection uses that was not measured here.
ASSUMPTIONS: dict[str, tuple[float, str, str]] = {
    "mau": (500e6, "users", "monthly active users (given)"),
    "peak_concurrent": (100e6, "users", "users connected at the daily peak (given)"),
    "playlists_total": (4e9, "playlists", "playlists stored (given)"),
    "plays_per_s": (37_000, "plays/s", "track starts per second at peak (given)"),
    "devices_online_per_user": (1.5, "devices", "connected devices per concurrent user (phone + sometimes a desktop/speaker)"),
    "devices_per_group": (3.0, "devices", "devices in a concurrent user's device group (online or in their grace period)"),
    "control_per_play": (0.5, "commands", "pause/seek/volume/shuffle/queue/transfer commands per play"),
    "transfer_share": (0.05, "", "share of control commands that are transfers"),
    "progress_per_play": (1.0, "reports", "listening reports (device.progress) per play"),
    "heartbeat_interval_s": (10.0, "s", "device heartbeat interval (actors/devicegroup.py HEARTBEAT_INTERVAL_MS)"),
    "gateway_vouches_heartbeats": (1.0, "0/1", ("1: the gateway sends ONE heartbeat per user per interval for all of "
                                   "its connections (op heartbeat {conns}); 0: every device sends its own")),
    "library_writes_per_play": (0.05, "writes", "library saves/removes per play"),
    "reads_per_play": (6.0, "reads", "state/library/playlist reads per play (now playing, hearts, opening a list)"),
    "playlist_edits_per_s": (3_000, "edits/s", "playlist edits per second at peak"),
    "playlist_reads_per_s": (60_000, "reads/s", "playlist item page reads per second at peak"),
    "active_playlists_share": (0.2, "", "active playlists at peak per concurrent user (being played or edited in the idle window)"),
    "connects_per_conn_per_hour": (2.0, "/h", "websocket (re)connects per connection per hour (mobile networks)"),
    "core_util_target": (0.6, "", "CPU utilisation planned per core (headroom for spikes, GC, failover)"),
    "mem_util_target": (0.7, "", "memory utilisation planned per machine"),
    "host_machine_cores": (32, "cores", "cores per host machine (one host actor = one event loop = one core)"),
    "host_machine_gb": (256, "GB", "memory per host machine"),
    "host_overhead_factor": (2.0, "x", ("host CPU beyond entity logic: Ray transport, pickling, batching, metrics "
                             "(calibrate with --live-report; the in-process model has none of it)")),
    "gateway_cpu_ms_per_frame": (0.05, "ms", "gateway CPU per websocket frame in or out (overridden by --live-report)"),
    "gateway_kb_per_conn": (40.0, "KB", "gateway memory per open websocket (overridden by --live-report)"),
    "gateway_machine_cores": (32, "cores", "cores per gateway machine"),
    "gateway_machine_gb": (128, "GB", "memory per gateway machine"),
    "ws_ping_interval_s": (20.0, "s", "websocket ping interval (GatewayConfig.heartbeat_s)"),
    "redis_warm_factor": (2.0, "x", "Redis keeps snapshots of this many times the active entities (recently passivated)"),
    "redis_node_gb": (64, "GB", "usable memory per Redis node"),
    "redis_node_ops": (150_000, "ops/s", "operations per Redis node (Lua scripts, pipelined)"),
    "pg_node_records_per_s": (30_000, "records/s", "log records per second per PostgreSQL primary (group-committed batches)"),
    "pg_node_tb": (4.0, "TB", "usable storage per PostgreSQL primary"),
    "pg_row_overhead_bytes": (60, "bytes", "PostgreSQL tuple + index overhead per stored row"),
    "log_tail_records": (5, "records", ("average log records per STORED entity not compacted into its snapshot "
                         "(passivation writes a snapshot and drops the records it covers, so at rest tails are short)")),
    "idle_group_share_stored": (1.0, "", "share of MAU with a stored device group"),
    # per machine, measured on a 3-node local cluster (docs/performance.md, node loss; simulate --nodes 3)
    "ray_node_mb": (110.0, "MB", ("RSS of a Ray worker node's own processes (raylet, agents) on every machine "
                    "(overridden by --live-report of a --nodes run)")),
    "ray_node_cores": (0.02, "cores", "CPU of a Ray worker node's own processes (overridden by --live-report of a --nodes run)"),
    "host_actor_idle_mb": (105.0, "MB", ("RSS of a host actor before its entities (Ray worker, catalog, store pool), "
                           "one per core (overridden by --live-report)")),
}


GATEWAY_IDLE_MB = 118.0     # RSS of a gateway actor with no connections (Ray worker, aiohttp, catalog), measured here


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


class Model:
    def __init__(self, args) -> None:
        self.a = args
        self.rng = random.Random(args.seed)
        self.results: dict = {"sizes": {"users": args.users, "devices_per_user": args.devices_per_user,
                                        "playlists": args.playlists, "tracks_per_playlist": args.tracks_per_playlist,
                                        "liked_per_user": args.liked, "ops_per_type": args.ops}}

    async def setup(self) -> None:
        from actors.entity import Env
        from actors.host import EntityHost
        from actors.kinds import default_kinds
        from catalog import Catalog
        from storage.memory import MemoryStore

        self.catalog = Catalog.generated()
        self.tracks = [t.uri for t in self.catalog.tracks]
        self.albums = [a.uri for a in self.catalog.albums]
        self.env = Env(catalog=self.catalog)
        self.store = MemoryStore()
        self.effects = 0
        self.host = EntityHost("scale", self.store, default_kinds(), self.env, idle_timeout_s=1e9,
                               dispatch=self._effect)
        # the committer only: ticks and passivation are driven (and measured) explicitly
        self.host._tasks = [asyncio.get_running_loop().create_task(self.host._committer())]

    def _effect(self, cmd):
        """Effects and asks (the device group's read of its user's market, actors/asks.py) go back
        into the host; the answer acknowledges an effect and is what an ask waits for."""
        self.effects += 1
        return self.host._ask_here(cmd)

    async def submit(self, cmds: list, chunk: int = 5000) -> dict:
        """Run commands through the host (enqueue, as a gateway batch does); wait for every answer."""
        errors: dict[str, int] = {}
        for i in range(0, len(cmds), chunk):
            part = cmds[i:i + chunk]
            done = asyncio.Event()
            left = [len(part)]

            def sink(reply, left=left, done=done):
                if reply.error is not None:
                    code = reply.error.code.value
                    errors[code] = errors.get(code, 0) + 1
                left[0] -= 1
                if left[0] == 0:
                    done.set()

            for c in part:
                self.host.enqueue(c, sink)
            await done.wait()
        return errors

    # -- population -------------------------------------------------------------------------------------
    def user(self, i: int) -> str:
        return f"u{i}"

    async def populate(self) -> None:
        from actors.entity import SYSTEM, Command, Principal
        a = self.a
        r = self.results
        base = _rss()
        mem = {}
        t0 = time.process_time()
        # sessions: one connection each, `liked` tracks in the library
        cmds = []
        for i in range(a.users):
            u = self.user(i)
            cmds.append(Command("session", u, "connect", {"conn": f"g0/c{i}", "device_id": "dev0", "client": "app",
                                                          "gateway": "g0"}, SYSTEM))
            for k in range(0, a.liked, 50):
                n = min(50, a.liked - k)
                start = (i * 7 + k) % (len(self.tracks) - n)
                cmds.append(Command("session", u, "library_save", {"uris": self.tracks[start:start + n]}, Principal(u)))
        errs = await self.submit(cmds)
        after = _rss()
        mem["session"] = {"entities": a.users, "bytes_per_entity": (after - base) / max(1, a.users), "errors": errs}
        # device groups: D devices registered, playing a 50-track list (repeat context)
        base = after
        cmds = []
        for i in range(a.users):
            u = self.user(i)
            p = Principal(u)
            for d in range(a.devices_per_user):
                cmds.append(Command("devicegroup", u, "register", {
                    "device_id": f"dev{d}", "name": f"device {d}", "type": ("smartphone", "computer", "speaker")[d % 3],
                    "volume_percent": 50, "supports_volume": True, "is_restricted": False}, p,
                    origin=("g0", f"c{i}-{d}")))
            start = (i * 13) % (len(self.tracks) - 50)
            cmds.append(Command("devicegroup", u, "play", {"uris": self.tracks[start:start + 50], "device_id": "dev0"}, p))
        errs = await self.submit(cmds)
        after = _rss()
        mem["devicegroup"] = {"entities": a.users, "bytes_per_entity": (after - base) / max(1, a.users),
                              "errors": errs}
        # playlists: created by a user, T tracks
        base = after
        self.pids = [f"pl{j:020d}" for j in range(a.playlists)]
        cmds = []
        for j, pid in enumerate(self.pids):
            owner = Principal(self.user(j % max(1, a.users)))
            cmds.append(Command("playlist", pid, "create", {"name": f"playlist {j}", "collaborative": True}, owner))
            start = (j * 31) % (len(self.tracks) - a.tracks_per_playlist)
            uris = self.tracks[start:start + a.tracks_per_playlist]
            for k in range(0, len(uris), 100):
                cmds.append(Command("playlist", pid, "add", {"uris": uris[k:k + 100]}, owner))
        errs = await self.submit(cmds)
        after = _rss()
        mem["playlist"] = {"entities": a.playlists, "bytes_per_entity": (after - base) / max(1, a.playlists),
                           "errors": errs}
        r["populate_cpu_s"] = round(time.process_time() - t0, 2)
        r["memory_active"] = {k: {"entities": v["entities"], "bytes_per_entity": round(v["bytes_per_entity"]),
                                  "errors": v["errors"]} for k, v in mem.items()}
        r["rss_mb"] = round(_rss() / 2**20, 1)

    # -- storage sizes -----------------------------------------------------------------------------------
    def storage_sizes(self) -> None:
        from actors.slot import pack
        sizes: dict = {}
        for kind, keys in (("session", [f"session:{self.user(i)}" for i in range(0, self.a.users, max(1, self.a.users // 200))]),
                           ("devicegroup", [f"devicegroup:{self.user(i)}" for i in range(0, self.a.users, max(1, self.a.users // 200))]),
                           ("playlist", [f"playlist:{p}" for p in self.pids[::max(1, len(self.pids) // 200)]])):
            snaps = []
            for k in keys:
                slot = self.host.slots.get(k)
                if slot is None or slot.entity is None:
                    continue
                snaps.append(len(pack({"state": slot.entity.snapshot(), "ops": []})))
            recs = [len(r.data) for key in keys for r in self.store._records.get(key, [])]
            sizes[kind] = {"snapshot_bytes_mean": round(sum(snaps) / len(snaps)) if snaps else None,
                           "snapshot_bytes_max": max(snaps) if snaps else None,
                           "record_bytes_mean": round(sum(recs) / len(recs)) if recs else None}
        self.results["storage"] = sizes

    # -- CPU per operation ---------------------------------------------------------------------------------
    async def op_costs(self) -> None:
        from actors.entity import SYSTEM, Command, Principal
        a, rng = self.a, self.rng
        n = a.ops
        U = a.users
        users = [self.user(rng.randrange(U)) for _ in range(n)]
        P = lambda u: Principal(u)
        gens = {
            "player.pause/play": lambda i, u: Command("devicegroup", u, "pause" if self._flip(u) else "play", {}, P(u)),
            "player.next": lambda i, u: Command("devicegroup", u, "next", {}, P(u)),
            "player.seek": lambda i, u: Command("devicegroup", u, "seek", {"position_ms": 1000 + i % 60000}, P(u)),
            "player.volume": lambda i, u: Command("devicegroup", u, "volume", {"volume_percent": 10 + i % 90}, P(u)),
            "player.transfer": lambda i, u: Command("devicegroup", u, "transfer",
                                                    {"device_ids": [f"dev{(i % (self.a.devices_per_user - 1)) + 1}"
                                                                    if self.a.devices_per_user > 1 else "dev0"],
                                                     "play": True}, P(u)),
            "player.play(context)": lambda i, u: Command("devicegroup", u, "play",
                                                         {"context_uri": self.albums[i % len(self.albums)]}, P(u)),
            "device.heartbeat": lambda i, u: Command("devicegroup", u, "heartbeat", {"device_id": "dev0"}, P(u)),
            "device.heartbeat(gateway, per user)": lambda i, u: Command("devicegroup", u, "heartbeat",
                                                                        {"conns": [f"g0/c{u[1:]}-0"]}, SYSTEM),
            "device.progress": lambda i, u: Command("devicegroup", u, "progress", {
                "event_id": f"ev{i}-{rng.random()}", "device_id": "dev0", "uri": self.tracks[i % len(self.tracks)],
                "ms_played": 31_000}, P(u)),
            "player.state": lambda i, u: Command("devicegroup", u, "state", {}, P(u)),
            "library.save": lambda i, u: Command("session", u, "library_save",
                                                 {"uris": [self.tracks[(i * 17) % len(self.tracks)]]}, P(u)),
            "library.remove": lambda i, u: Command("session", u, "library_remove",
                                                   {"uris": [self.tracks[(i * 17) % len(self.tracks)]]}, P(u)),
            "library.contains(20)": lambda i, u: Command("session", u, "library_contains",
                                                         {"uris": self.tracks[i % 5000:i % 5000 + 20]}, P(u)),
            "session.connect+disconnect": None,
        }
        costs = {}
        for name, gen in gens.items():
            if gen is None:
                cmds = []
                for i, u in enumerate(users[: n // 2]):
                    conn = f"g1/x{i}"
                    cmds.append(Command("session", u, "connect", {"conn": conn, "device_id": "devx", "client": "app",
                                                                  "gateway": "g1"}, SYSTEM))
                    cmds.append(Command("session", u, "disconnect", {"conn": conn}, SYSTEM))
            else:
                cmds = [gen(i, u) for i, u in enumerate(users)]
            costs[name] = await self._measure(cmds)
        # playlists
        pl = [self.pids[rng.randrange(len(self.pids))] for _ in range(n)]
        owner_of = {pid: self.user(j % max(1, U)) for j, pid in enumerate(self.pids)}
        costs["playlist.add"] = await self._measure([Command("playlist", p, "add", {"uris": [self.tracks[i % len(self.tracks)]]},
                                                             P(owner_of[p])) for i, p in enumerate(pl)])
        costs["playlist.reorder"] = await self._measure([Command("playlist", p, "reorder",
                                                                 {"range_start": 0, "insert_before": 5}, P(owner_of[p]))
                                                         for p in pl])
        costs["playlist.items(100)"] = await self._measure([Command("playlist", p, "items", {"limit": 100},
                                                                    P(owner_of[p])) for p in pl])
        costs["playlist.remove"] = await self._measure([Command("playlist", p, "remove", {
            "tracks": [{"uri": self.tracks[i % len(self.tracks)]}]}, P(owner_of[p])) for i, p in enumerate(pl)])
        self.results["cpu_us_per_op"] = costs

    def _flip(self, u: str) -> bool:
        slot = self.host.slots.get(f"devicegroup:{u}")
        return bool(slot and slot.entity and slot.entity.p.get("playing"))

    async def _measure(self, cmds: list) -> dict:
        gc.collect()
        t0 = time.process_time()
        errs = await self.submit(cmds)
        cpu = time.process_time() - t0
        return {"n": len(cmds), "cpu_us": round(cpu / max(1, len(cmds)) * 1e6, 1),
                "per_core_per_s": round(len(cmds) / cpu) if cpu else None, "refused": errs}

    async def ticks(self) -> None:
        """CPU of one tick of an active entity, per kind (device groups tick every 1 s, sessions every
        5 s while active: see their tick_ms)."""
        h = self.host
        far = time.time() + 10 ** 6
        out = {}
        for kind in ("devicegroup", "session"):
            n = 0
            for s in h.slots.values():
                if s.entity is not None and s.entity.tick_ms:
                    if s.kind == kind:
                        s.next_tick = 0.0
                        n += 1
                    else:
                        s.next_tick = float("inf")
            gc.collect()
            t0 = time.process_time()
            h.run_ticks(now=far)
            await h.drain(timeout=600)
            cpu = time.process_time() - t0
            tick_ms = next((s.entity.tick_ms for s in h.slots.values() if s.kind == kind and s.entity), None)
            out[kind] = {"entities_ticked": n, "cpu_us_per_tick": round(cpu / max(1, n) * 1e6, 2),
                         "tick_every_s": (tick_ms or 0) / 1000}
        self.results["tick"] = out

    async def passivation(self) -> None:
        """CPU to passivate (snapshot) and re-activate (load + restore) entities, per kind."""
        from actors.entity import Command, Principal
        out = {}
        h = self.host
        samples = {"session": [f"session:{self.user(i)}" for i in range(min(self.a.users, 2000))],
                   "devicegroup": [f"devicegroup:{self.user(i)}" for i in range(min(self.a.users, 2000))],
                   "playlist": [f"playlist:{p}" for p in self.pids[:2000]]}
        for kind, keys in samples.items():
            slots = [h.slots[k] for k in keys if k in h.slots]
            gc.collect()
            t0 = time.process_time()
            for s in slots:
                await h._passivate(s)
            t_pass = time.process_time() - t0
            reads = {"session": lambda eid: Command("session", eid, "library_contains",
                                                     {"uris": self.tracks[:1]}, Principal(eid)),
                     "devicegroup": lambda eid: Command("devicegroup", eid, "devices", {}, Principal(eid)),
                     "playlist": lambda eid: Command("playlist", eid, "get", {}, Principal(self._owner(eid)))}[kind]
            cmds = [reads(s.entity_id) for s in slots]
            gc.collect()
            t0 = time.process_time()
            await self.submit(cmds)
            t_act = time.process_time() - t0
            out[kind] = {"entities": len(slots), "passivate_us": round(t_pass / max(1, len(slots)) * 1e6, 1),
                         "activate_us": round(t_act / max(1, len(slots)) * 1e6, 1)}
        self.results["passivation"] = out

    def _owner(self, pid: str) -> str:
        j = int(pid[2:])
        return self.user(j % max(1, self.a.users))

    async def run(self) -> dict:
        t0 = time.perf_counter()
        await self.setup()
        await self.populate()
        self.storage_sizes()
        await self.op_costs()
        await self.ticks()
        await self.passivation()
        self.results["wall_s"] = round(time.perf_counter() - t0, 1)
        for t in self.host._tasks:
            t.cancel()
        return self.results


# -- projection --------------------------------------------------------------------------------------------
def project(m: dict, assume: dict[str, float], live: dict | None = None) -> dict:
    A = dict(assume)
    calib = {}
    if live:
        calib = calibrate(live)
        A.update({k: v for k, v in calib.items() if k in A})
    cpu = m["cpu_us_per_op"]
    us = lambda name: cpu[name]["cpu_us"]
    conc = A["peak_concurrent"]
    conns = conc * A["devices_online_per_user"]
    plays = A["plays_per_s"]
    control = plays * A["control_per_play"]
    # -- operations per second at peak (host commands) ---------------------------------------------------
    hb_cmds = (conc if A["gateway_vouches_heartbeats"] else conns) / A["heartbeat_interval_s"]
    hb_us = us("device.heartbeat(gateway, per user)") if A["gateway_vouches_heartbeats"] else us("device.heartbeat")
    connects = conns * A["connects_per_conn_per_hour"] / 3600
    ops = {
        "plays (play/next)": (plays, (us("player.next") + us("player.play(context)")) / 2),
        "control (pause/seek/volume/transfer)": (control, (us("player.pause/play") + us("player.seek") + us("player.volume")
                                                           + us("player.transfer") * 0.2) / 3.2),
        "listening reports": (plays * A["progress_per_play"], us("device.progress")),
        "library writes": (plays * A["library_writes_per_play"], (us("library.save") + us("library.remove")) / 2),
        "reads (state, library)": (plays * A["reads_per_play"], (us("player.state") + us("library.contains(20)")) / 2),
        "playlist edits": (A["playlist_edits_per_s"], (us("playlist.add") + us("playlist.remove") + us("playlist.reorder")) / 3),
        "playlist reads": (A["playlist_reads_per_s"], us("playlist.items(100)")),
        "heartbeats": (hb_cmds, hb_us),
        "connects + disconnects": (2 * connects, us("session.connect+disconnect")),
        "device group ticks (while active)": (conc / (m["tick"]["devicegroup"]["tick_every_s"] or 1),
                                              m["tick"]["devicegroup"]["cpu_us_per_tick"]),
        "session ticks (while active)": (conc / (m["tick"]["session"]["tick_every_s"] or 1),
                                         m["tick"]["session"]["cpu_us_per_tick"]),
    }
    durable = {  # which of them write a log record
        "plays (play/next)": 1, "control (pause/seek/volume/transfer)": 1, "listening reports": 1, "library writes": 1,
        "playlist edits": 1, "connects + disconnects": 1, "reads (state, library)": 0, "playlist reads": 0,
        "heartbeats": 0, "device group ticks (while active)": 0, "session ticks (while active)": 0}
    rows = []
    host_core_s = 0.0
    for name, (rate, cost_us) in ops.items():
        # ticks never cross the transport: the in-process measurement is the whole cost
        core = rate * cost_us * 1e-6 * (1.0 if "ticks" in name else A["host_overhead_factor"])
        host_core_s += core
        rows.append({"load": name, "per_s": round(rate), "host_cpu_us": round(cost_us, 1), "host_cores": round(core, 1),
                     "durable": bool(durable[name])})
    records_per_s = sum(rate * durable[name] for name, (rate, _) in ops.items())
    # track ends auto-advance (a record) about once per play
    records_per_s += plays
    # -- memory of active entities -------------------------------------------------------------------------
    mem = m["memory_active"]
    active_playlists = conc * A["active_playlists_share"]
    mem_bytes = (conc * mem["session"]["bytes_per_entity"] + conc * mem["devicegroup"]["bytes_per_entity"]
                 + active_playlists * mem["playlist"]["bytes_per_entity"])
    host_cores_needed = host_core_s / A["core_util_target"]
    # every machine is a Ray node: its raylet and agents, and one host actor process a core, come first
    host_cores_usable = A["host_machine_cores"] - A["ray_node_cores"]
    host_gb_usable = (A["host_machine_gb"] * A["mem_util_target"]
                      - (A["ray_node_mb"] + host_cores_usable * A["host_actor_idle_mb"]) / 1024)
    host_machines_cpu = host_cores_needed / host_cores_usable
    host_machines_mem = mem_bytes / (host_gb_usable * 2**30)
    host_machines = math.ceil(max(host_machines_cpu, host_machines_mem))
    # -- gateways --------------------------------------------------------------------------------------------
    pushes_per_cmd = A["devices_online_per_user"]
    frames = (sum(rate for name, (rate, _) in ops.items() if not name.startswith(("device group ticks", "heartbeats",
                                                                                   "connects", "session ticks")))
              * (1 + pushes_per_cmd)                          # request + answer/pushes to each device
              + conns / A["heartbeat_interval_s"] * 2         # device heartbeats in and answers out
              + conns / A["ws_ping_interval_s"] * 2)          # websocket pings and pongs
    gw_cores = frames * A["gateway_cpu_ms_per_frame"] * 1e-3 / A["core_util_target"]
    gw_mem = conns * A["gateway_kb_per_conn"] * 1024
    gw_cores_usable = A["gateway_machine_cores"] - A["ray_node_cores"]
    gw_gb_usable = (A["gateway_machine_gb"] * A["mem_util_target"]
                    - (A["ray_node_mb"] + gw_cores_usable * GATEWAY_IDLE_MB) / 1024)
    gw_machines = math.ceil(max(gw_cores / gw_cores_usable, gw_mem / (gw_gb_usable * 2**30)))
    # -- storage ---------------------------------------------------------------------------------------------
    st = m["storage"]
    snap = {k: (v["snapshot_bytes_mean"] or 0) + A["pg_row_overhead_bytes"] for k, v in st.items()}
    rec = {k: (v["record_bytes_mean"] or 0) + A["pg_row_overhead_bytes"] for k, v in st.items()}
    stored = {"session": A["mau"], "devicegroup": A["mau"] * A["idle_group_share_stored"],
              "playlist": A["playlists_total"]}
    pg_bytes = sum(stored[k] * (snap[k] + A["log_tail_records"] * rec[k]) for k in stored)
    pg_nodes_storage = pg_bytes / (A["pg_node_tb"] * 1e12)
    pg_nodes_writes = records_per_s / A["pg_node_records_per_s"]
    pg_nodes = math.ceil(max(pg_nodes_storage, pg_nodes_writes))
    activations_per_s = connects / A["devices_online_per_user"] * 2      # a (re)connecting user wakes 2 entities
    redis_bytes = (conc * (snap["session"] + snap["devicegroup"]) + active_playlists * snap["playlist"]) \
        * A["redis_warm_factor"]
    redis_ops = records_per_s + activations_per_s
    redis_nodes = math.ceil(max(redis_bytes / (A["redis_node_gb"] * 2**30), redis_ops / A["redis_node_ops"]))
    return {
        "assumptions": {k: {"value": A[k], "unit": ASSUMPTIONS[k][1], "why": ASSUMPTIONS[k][2],
                            "calibrated": k in calib} for k in ASSUMPTIONS},
        "loads": rows,
        "hosts": {"cores_busy": round(host_core_s), "cores_planned": round(host_cores_needed),
                  "host_actors": math.ceil(host_cores_needed), "machines_for_cpu": round(host_machines_cpu, 1),
                  "active_entity_memory_gb": round(mem_bytes / 2**30), "machines_for_memory": round(host_machines_mem, 1),
                  "machine_gb_for_entities": round(host_gb_usable, 1), "machines": host_machines},
        "gateways": {"connections": round(conns), "frames_per_s": round(frames), "cores_planned": round(gw_cores),
                     "memory_gb": round(gw_mem / 2**30), "machines": gw_machines},
        "postgres": {"records_per_s": round(records_per_s), "stored_tb": round(pg_bytes / 1e12, 1),
                     "primaries_for_writes": round(pg_nodes_writes, 1),
                     "primaries_for_storage": round(pg_nodes_storage, 1), "primaries": pg_nodes},
        "redis": {"warm_gb": round(redis_bytes / 2**30), "ops_per_s": round(redis_ops), "nodes": redis_nodes},
    }


def calibrate(report: dict) -> dict:
    """Gateway CPU per frame and memory per connection from a live run (a simulation's report.json):
    the gateway processes' mean CPU over the load phase / the frames its clients sent and received,
    and (its peak RSS - an idle gateway's RSS) / the clients connected."""
    out = {}
    procs = (report.get("resources") or {}).get("processes") or {}
    gws = [v for k, v in procs.items() if k.startswith("gateway")]
    clients = report.get("clients") or {}
    frames = (clients.get("frames_in") or 0) + (clients.get("frames_out") or 0)
    dur = report.get("duration_s") or 0
    if gws and frames and dur:
        cpu_core_s = sum(g["cpu_pct_mean"] for g in gws) / 100 * dur
        out["gateway_cpu_ms_per_frame"] = round(cpu_core_s * 1000 / frames, 4)
    # a --nodes run: each worker node's own Ray processes (the head also runs the GCS: not a per-machine cost)
    nodes = [v for k, v in procs.items() if k.startswith("ray node") and "head" not in k]
    if nodes:
        out["ray_node_mb"] = round(sum(n["rss_mb_mean"] for n in nodes) / len(nodes), 1)
        out["ray_node_cores"] = round(sum(n["cpu_pct_mean"] for n in nodes) / len(nodes) / 100, 3)
    hosts = [v for k, v in procs.items() if k.startswith("host-")]
    if hosts:
        out["host_actor_idle_mb"] = round(min(h["rss_mb_mean"] for h in hosts), 1)
    conns = clients.get("clients")
    if gws and conns:
        idle = GATEWAY_IDLE_MB * len(gws)
        out["gateway_kb_per_conn"] = round(max(1.0, (sum(g["rss_mb_max"] for g in gws) - idle) * 1024 / conns), 1)
    return out


def markdown(m: dict, proj: dict) -> str:
    L = ["# Scale model", "", f"Population (in one process, in-memory store): {m['sizes']}. Wall {m.get('wall_s')} s.", "",
         "## Measured", "", "| kind | active entities | memory per active entity | snapshot bytes (mean / max) | log record bytes |",
         "|---|---:|---:|---:|---:|"]
    for k, v in m["memory_active"].items():
        s = m["storage"].get(k, {})
        L.append(f"| {k} | {v['entities']:,} | {v['bytes_per_entity'] / 1024:,.1f} KB | {s.get('snapshot_bytes_mean')} / "
                 f"{s.get('snapshot_bytes_max')} | {s.get('record_bytes_mean')} |")
    L += ["", "| operation (host, in-process) | n | CPU µs per op | ops per core-second | refused |", "|---|---:|---:|---:|---|"]
    for k, v in m["cpu_us_per_op"].items():
        L.append(f"| {k} | {v['n']:,} | {v['cpu_us']} | {v['per_core_per_s']:,} | {v['refused'] or ''} |")
    L += [""] + [f"Tick of an active {k}: {t['cpu_us_per_tick']} µs, every {t['tick_every_s']:g} s "
                 f"({t['entities_ticked']:,} ticked)." for k, t in m["tick"].items()]
    L += ["", "| kind | passivate µs | activate µs |", "|---|---:|---:|"]
    for k, v in m["passivation"].items():
        L.append(f"| {k} | {v['passivate_us']} | {v['activate_us']} |")
    L += ["", "## Capacity at 500 M MAU / 100 M concurrent / 4 B playlists / 37,000 plays/s", "",
          "| load at peak | per s | host CPU µs each | host cores | durable |", "|---|---:|---:|---:|---|"]
    for r in proj["loads"]:
        L.append(f"| {r['load']} | {r['per_s']:,} | {r['host_cpu_us']} | {r['host_cores']:,} | {'yes' if r['durable'] else ''} |")
    h, g, p, r = proj["hosts"], proj["gateways"], proj["postgres"], proj["redis"]
    L += ["", "| tier | sizing |", "|---|---|",
          (f"| entity hosts | {h['cores_busy']:,} cores busy -> {h['host_actors']:,} host actors; active entities "
           f"{h['active_entity_memory_gb']:,} GB ({h['machine_gb_for_entities']:,} GB a machine once its Ray node and host "
           f"processes are counted); **{h['machines']:,} machines** (CPU needs {h['machines_for_cpu']}, "
           f"memory {h['machines_for_memory']}) |"),
          (f"| gateways | {g['connections']:,} websockets, {g['frames_per_s']:,} frames/s, {g['cores_planned']:,} cores, "
           f"{g['memory_gb']:,} GB; **{g['machines']:,} machines** |"),
          (f"| PostgreSQL | {p['records_per_s']:,} log records/s, {p['stored_tb']:,} TB; **{p['primaries']:,} primaries** "
           f"(writes need {p['primaries_for_writes']}, storage {p['primaries_for_storage']}) |"),
          f"| Redis (warm tier) | {r['warm_gb']:,} GB, {r['ops_per_s']:,} ops/s; **{r['nodes']:,} nodes** |",
          "", "## Assumptions", "", "| name | value | unit | why |", "|---|---:|---|---|"]
    for k, v in proj["assumptions"].items():
        L.append(f"| {k}{' (calibrated)' if v['calibrated'] else ''} | {v['value']:,} | {v['unit']} | {v['why']} |")
    return "\n".join(L)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=20_000, help="users (one session and one device group each)")
    p.add_argument("--devices-per-user", type=int, default=3)
    p.add_argument("--playlists", type=int, default=2_000)
    p.add_argument("--tracks-per-playlist", type=int, default=50)
    p.add_argument("--liked", type=int, default=50, help="liked tracks per user")
    p.add_argument("--ops", type=int, default=3_000, help="commands measured per operation type")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write report.json and report.md here")
    p.add_argument("--live-report", help="a live run's report.json to calibrate the gateway numbers")
    p.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE", help="override an assumption")


def main_args(a) -> int:
    assume = {k: v[0] for k, v in ASSUMPTIONS.items()}
    for kv in a.assume:
        k, _, v = kv.partition("=")
        if k not in assume:
            raise SystemExit(f"unknown assumption {k!r}; one of {', '.join(assume)}")
        assume[k] = float(v)
    live = json.loads(Path(a.live_report).read_text()) if a.live_report else None
    m = asyncio.run(Model(a).run())
    proj = project(m, assume, live)
    md = markdown(m, proj)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"measured": m, "projection": proj}, indent=1))
        (out / "report.md").write_text(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.scale_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
