"""connect: U users x D devices on websockets, playback commands, transfers, device churn (workload W2).

Every device connects with a token bound to its device id and registers (`device.register`), which
subscribes it to its user's device group. Device 0 starts playback of 50 catalog tracks (repeat
context). Then each user sends one command every 1/--rate seconds (Poisson) from a random online
device, never two at once:
  --transfer-share   transfer to another online device, play=true
  otherwise          50 % pause/resume (from the last pushed state), 20 % volume, 15 % seek, 15 % next
Races (ALREADY_PAUSED after a track change, NO_ACTIVE_DEVICE after the active device dropped, ...)
are answered with Spotify's errors; they are counted as refusals, not failures.

--churn N: each device drops its connection N times per minute on average, stays away
--churn-offline-s, reconnects and registers again (picking up where it was).

Measured (one clock: every device lives in this process):
  w2:command          command sent -> a `player.changed` with version >= the command's result
                      version received by EVERY online device of the user
  w2:transfer         transfer sent -> the target device received a state where it is the active
                      device and is playing
  lost                (command, online device) pairs still missing after --deadline-s
  out_of_order        pushes whose version is lower than one the device already had
Convergence: after the run every online device holds the server's latest version, all of a user's
devices hold the same state (active device, playing, track, revision), equal to `player.state`; and
no acknowledged command's version was handed out twice (a lost acknowledged change would be).
"""
from __future__ import annotations

import asyncio
import bisect
import time
from typing import ClassVar

from simulations.client import ClientError, SimClient
from simulations.report import summarize
from simulations.scenarios.base import Scenario

DEVICE_TYPES = ("computer", "smartphone", "speaker", "tv", "car")
EXPECTED = ("ALREADY_PAUSED", "NOT_PAUSED", "NO_NEXT_TRACK", "NO_PREV_TRACK", "NO_ACTIVE_DEVICE",
            "NO_SPECIFIC_TRACK", "BAD_REQUEST", "NOT_FOUND", "CONFLICT")


class _Dev:
    __slots__ = (
        "client",
        "cluster",
        "did",
        "gaps",
        "k",
        "last_rev",
        "online",
        "out_of_order",
        "pushes",
        "times",
        "user",
        "versions",
    )

    def __init__(self, user: _User, k: int, did: str) -> None:
        self.user, self.k, self.did = user, k, did
        self.client: SimClient | None = None
        self.versions: list[int] = []
        self.times: list[float] = []
        self.cluster: dict | None = None
        self.out_of_order = 0
        self.online = False
        self.pushes = 0
        self.last_rev: int | None = None      # the cluster revision (+1 per push) last seen
        self.gaps = 0                         # revisions never received while connected: lost states

    @property
    def last(self) -> int:
        return self.versions[-1] if self.versions else -1

    def first_at_or_after(self, v: int) -> float | None:
        i = bisect.bisect_left(self.versions, v)
        return self.times[i] if i < len(self.versions) else None


def track_cluster(d: _Dev, v, cluster: dict, t: float) -> bool:
    """Book one device-group state (a push, or a register answer) on a device: versions must grow,
    revisions must come one by one while connected (a skipped revision is a lost state). True if
    it is newer than what the device had."""
    if not isinstance(v, int):
        return False
    d.pushes += 1
    if d.versions and v < d.versions[-1]:
        d.out_of_order += 1
        return False
    if d.versions and v == d.versions[-1]:
        return False
    rev = cluster.get("revision")
    if isinstance(rev, int):
        if d.last_rev is not None and rev > d.last_rev + 1:
            d.gaps += rev - d.last_rev - 1
        d.last_rev = rev if d.last_rev is None else max(rev, d.last_rev)
    d.versions.append(v)
    d.times.append(t)
    if len(d.versions) > 4096:
        del d.versions[:2048], d.times[:2048]
    d.cluster = cluster
    return True


def resync_baseline(d, msg: dict) -> None:
    """A resync is the whole state again, like a re-registration: a new baseline. The revisions in
    between were replaced by it, not lost (docs/protocol.md, resync). Not a reset to None: a resync
    at the version the device already has is skipped as a duplicate, and must leave the device at
    its revision."""
    rev = (msg.get("payload") or {}).get("revision")
    if isinstance(rev, int) and (d.last_rev is None or rev > d.last_rev):
        d.last_rev = rev


def reset_gaps(users: list) -> int:
    """Revision gaps seen while setting up (devices registering together); the load phase counts anew."""
    n = 0
    for u in users:
        for d in u.devs:
            n += d.gaps
            d.gaps = 0
    return n


def device_verdict(users: list, server_rev: dict, examples: list) -> tuple[int, int]:
    """(diverged users, devices behind): every online device at the server's revision, and all of a
    user's online devices showing the same state."""
    diverged = behind = 0
    for u in users:
        online = u.online()
        for d in online:
            if d.last_rev is None or d.last_rev < server_rev.get(u.uid, 0):
                behind += 1
        views = {(d.last_rev, (d.cluster or {}).get("active_device_id"),
                  ((d.cluster or {}).get("player") or {}).get("is_playing"),
                  (((d.cluster or {}).get("player") or {}).get("track") or {}).get("uri")) for d in online}
        if len(views) > 1:
            diverged += 1
            if len(examples) < 10:
                examples.append(f"{u.uid}: {len(views)} different states on {len(online)} devices: {sorted(map(str, views))}")
    return diverged, behind


async def server_revisions(users: list, examples: list) -> dict:
    """The device group's current revision per user, from a heartbeat answer (it carries it)."""
    out = {}
    for u in users:
        online = u.online()
        if not online:
            continue
        d = online[0]
        try:
            res = await d.client.call("device.heartbeat", {"device_id": d.did}, mutate=False)
            rev = (res.payload or {}).get("revision")
            if isinstance(rev, int):
                out[u.uid] = rev
        except ClientError as err:
            examples.append(f"{u.uid}: heartbeat {err.code}")
    return out


class _Waiter:
    __slots__ = ("cmd_done", "done_target", "kind", "remaining", "sent", "target", "version", "worst")

    def __init__(self, version, sent, remaining, kind, target=None):
        self.version, self.sent, self.remaining = version, sent, remaining
        self.worst = sent
        self.kind, self.target = kind, target
        self.done_target = target is None
        self.cmd_done = False


def w2_command(rng, is_playing: bool, duration_ms: int) -> tuple[str, dict]:
    """W2's command when it is not a transfer: pause/play 50 %, volume 20 %, seek 15 %, next 15 %
    (simulations/bench_host_cycle.py draws the same)."""
    r = rng.random()
    if r < 0.5:
        return ("player.pause", {}) if is_playing else ("player.play", {})
    if r < 0.7:
        return "player.volume", {"volume_percent": rng.randint(10, 100)}
    if r < 0.85:
        return "player.seek", {"position_ms": rng.randint(0, max(1, duration_ms // 2))}
    return "player.next", {}


class _User:
    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.devs: list[_Dev] = []
        self.waiters: list[_Waiter] = []
        self.busy = False
        self.acked: list[tuple[int, str]] = []      # (version, op) of acknowledged commands

    def online(self) -> list[_Dev]:
        return [d for d in self.devs if d.online]

    def state(self) -> dict:
        for d in sorted(self.devs, key=lambda d: -d.last):
            if d.cluster is not None:
                return d.cluster
        return {}


class Connect(Scenario):
    name = "connect"
    quiet_collector = True          # W2 (bench_connect): its latencies are the benchmark
    description = "U users x D devices: playback commands, transfers, churn (W2)"
    params: ClassVar[dict] = {"users": 50, "devices": 3, "rate": 0.5, "transfer_share": 0.1, "churn": 0.0, "churn_offline_s": 1.0,
              "deadline_s": 5.0, "heartbeat_s": 10.0, "encoding": "json"}
    help: ClassVar[dict] = {"users": "users", "devices": "devices per user", "rate": "commands per user per second (W2: 0.5)",
            "transfer_share": "share of commands that are transfers",
            "churn": "disconnects per device per minute", "churn_offline_s": "seconds a churned device stays away",
            "deadline_s": "a state not on every device after this long is lost",
            "heartbeat_s": "device heartbeat interval"}

    async def setup(self) -> None:
        U, D = int(self.p["users"]), int(self.p["devices"])
        self.users: list[_User] = []
        self.lost = 0
        self.transfers_lost = 0
        self.context = self.tracks[:50]
        for i in range(U):
            u = _User(self.user(i))
            self.users.append(u)
            for k in range(D):
                d = _Dev(u, k, f"dev{k}")
                d.client = self.client(u.uid, device_id=d.did)
                d.client.on("player.changed", self._on_push(d))
                d.client.on("resync", self._on_push(d, resync=True))
                d.client.on_reconnect(self._reregister(d))
                d.client.on_disconnect(self._gone(d))
                u.devs.append(d)
        all_devs = [d for u in self.users for d in u.devs]
        await self.connect_all(d.client for d in all_devs)
        sem = asyncio.Semaphore(64)

        async def register(d: _Dev) -> None:
            async with sem:
                await self._register(d)

        await asyncio.gather(*(register(d) for d in all_devs))

        async def start(u: _User) -> None:
            async with sem:
                c = u.devs[0].client
                res = await c.call("player.play", {"uris": self.context, "device_id": u.devs[0].did})
                u.acked.append((res.version, "play"))
                res = await c.call("player.repeat", {"state": "context"})
                u.acked.append((res.version, "repeat"))

        await asyncio.gather(*(start(u) for u in self.users))
        self.setup_gaps = reset_gaps(self.users)

    async def _register(self, d: _Dev) -> None:
        res = await d.client.call("device.register", {
            "device_id": d.did, "name": f"{d.user.uid} {d.did}", "type": DEVICE_TYPES[d.k % len(DEVICE_TYPES)],
            "volume_percent": 50, "supports_volume": True, "is_restricted": False})
        d.online = True
        if isinstance(res.payload, dict) and res.payload.get("devices") is not None:
            self._arrive(d, res.version, res.payload, res.done)

    def _reregister(self, d: _Dev):
        async def hook(c: SimClient) -> None:
            await self._register(d)
        return hook

    def _gone(self, d: _Dev):
        def hook(c: SimClient) -> None:
            d.online = False
            d.last_rev = None                 # it will catch up from its register answer
            for w in d.user.waiters:          # a device away can't be waited for
                w.remaining.discard(d.k)
            self._complete(d.user)
        return hook

    # -- pushes -------------------------------------------------------------------------------------
    def _on_push(self, d: _Dev, resync: bool = False):
        def handler(msg, t):
            if resync:                        # a host restarted: the gateway re-subscribed for us
                if not str(msg.get("entity", "")).startswith("devicegroup:"):
                    return
                self.rec.count("resync:devicegroup")
                resync_baseline(d, msg)
            self._arrive(d, msg.get("version"), msg.get("payload") or {}, t)
        return handler

    def _arrive(self, d: _Dev, v, cluster: dict, t: float) -> None:
        if not track_cluster(d, v, cluster, t):
            return
        u = d.user
        for w in u.waiters:
            if v >= w.version:
                if d.k in w.remaining:
                    w.remaining.discard(d.k)
                    w.worst = max(w.worst, t)
                if not w.done_target and d.did == w.target and cluster.get("active_device_id") == d.did \
                        and (cluster.get("player") or {}).get("is_playing"):
                    w.done_target = True
                    self.rec.latency("w2:transfer", (t - w.sent) * 1000, t_done=t)
        self._complete(u)

    def _complete(self, u: _User) -> None:
        keep = []
        for w in u.waiters:
            if not w.remaining and not w.cmd_done:
                w.cmd_done = True
                self.rec.latency("w2:command", (w.worst - w.sent) * 1000, t_done=w.worst)
            if w.cmd_done and w.done_target:
                continue
            keep.append(w)
        u.waiters = keep

    def _expire(self, now: float) -> None:
        deadline = float(self.p["deadline_s"])
        for u in self.users:
            keep = []
            for w in u.waiters:
                if now - w.sent > deadline:
                    if w.remaining and not w.cmd_done:
                        self.lost += len(w.remaining)
                        self.rec.error("w2:state", "STATE_LOST")
                    if not w.done_target:
                        self.transfers_lost += 1
                        self.rec.error("w2:transfer", "TRANSFER_NOT_PLAYING")
                    continue
                keep.append(w)
            u.waiters = keep

    # -- commands -----------------------------------------------------------------------------------------
    async def _command(self, u: _User) -> None:
        if u.busy:
            self.rec.count("skipped:busy")
            return
        online = u.online()
        if not online:
            return
        u.busy = True
        try:
            src = self.rng.choice(online)
            st = u.state()
            player = st.get("player") or {}
            active = st.get("active_device_id")
            r = self.rng.random()
            target = None
            others = [d for d in online if d.did != active]
            if (r < float(self.p["transfer_share"]) or active is None) and others:
                target = self.rng.choice(others).did
                op, payload = "player.transfer", {"device_ids": [target], "play": True}
            else:
                op, payload = w2_command(self.rng, bool(player.get("is_playing")), player.get("duration") or 120_000)
            sent = time.perf_counter()
            res = await self.req(src.client, op, payload, expected=EXPECTED)
            if res is None:
                return
            u.acked.append((res.version, op))
            self.ledger.ack((u.uid, res.version, op), self.rec.rel(res.done))
            if not isinstance(res.version, int):
                return
            remaining = {d.k for d in u.online()}
            w = _Waiter(res.version, sent, remaining, op, target)
            # the pushes may have arrived before the answer (other sockets)
            for d in u.devs:
                if d.k in w.remaining:
                    t = d.first_at_or_after(res.version)
                    if t is not None:
                        w.remaining.discard(d.k)
                        w.worst = max(w.worst, t)
                        if target == d.did and d.cluster and d.cluster.get("active_device_id") == target \
                                and (d.cluster.get("player") or {}).get("is_playing"):
                            w.done_target = True
                            self.rec.latency("w2:transfer", (t - sent) * 1000, t_done=t)
            u.waiters.append(w)
            self._complete(u)
        finally:
            u.busy = False

    async def _heartbeats(self) -> None:
        period = float(self.p["heartbeat_s"])

        async def beat(d: _Dev) -> None:
            if d.online:
                await self.req(d.client, "device.heartbeat", {"device_id": d.did}, metric="ack:device.heartbeat",
                               expected=("NOT_FOUND",))

        await asyncio.gather(*(self.every(period, lambda d=d: beat(d), jitter=False)
                               for u in self.users for d in u.devs))

    async def _churn(self, d: _Dev) -> None:
        c = d.client
        if not d.online or getattr(c, "churning", False):
            return                           # still away from the last drop
        c.churning = True
        try:
            await self._churn_once(d)
        finally:
            c.churning = False

    async def _churn_once(self, d: _Dev) -> None:
        c = d.client
        c.reconnect_enabled = False
        await c.drop()
        self.rec.count("churn:drops")
        await asyncio.sleep(float(self.p["churn_offline_s"]))      # how long the device stays away
        c.reconnect_enabled = True
        if not await self.reconnect(c):
            return
        try:
            await self._register(d)
            self.rec.count("churn:back")
        except ClientError as err:
            self.rec.error("churn:register", err.code)

    async def _expirer(self) -> None:
        while self.rec.now() < self.seconds:
            self._expire(time.perf_counter())
            await asyncio.sleep(0.5)             # sweep interval for overdue states

    async def run(self, seconds: float) -> None:
        tasks = [self.wait_load_end(), self._expirer(), self._heartbeats()]
        rate = float(self.p["rate"])
        if rate > 0:
            tasks += [self.every(1 / rate, lambda u=u: self._command(u)) for u in self.users]
        churn = float(self.p["churn"])
        if churn > 0:
            tasks += [self.every(60.0 / churn, lambda d=d: self._churn(d)) for u in self.users for d in u.devs]
        await asyncio.gather(*tasks)

    def progress_info(self) -> str:
        done = len(self.rec.lat.get("w2:command", ()))
        return super().progress_info() + f"  states {done:,}  lost {self.lost}"

    async def verify(self) -> dict:
        # the outstanding waiters get their full deadline
        await self.wait_until(lambda: not any(u.waiters for u in self.users), float(self.p["deadline_s"]))
        self._expire(time.perf_counter() + 3600)
        errors: list[str] = []
        examples: list[str] = []
        server_rev = await server_revisions(self.users, errors)
        await self.wait_until(lambda: all((d.last_rev or 0) >= server_rev.get(u.uid, 0)
                                          for u in self.users for d in u.online()), 10)
        n_div, behind = device_verdict(self.users, server_rev, examples)
        diverged = examples
        # the devices' common state against player.state, read while the revision stands still
        for u in self.users:
            online = u.online()
            views = {((d.cluster or {}).get("active_device_id"), ((d.cluster or {}).get("player") or {}).get("is_playing"),
                      (((d.cluster or {}).get("player") or {}).get("track") or {}).get("uri")) for d in online}
            if not online or len(views) != 1 or online[0].last_rev != server_rev.get(u.uid):
                continue
            try:
                res = await online[0].client.call("player.state", {}, mutate=False)
                again = await online[0].client.call("device.heartbeat", {"device_id": online[0].did}, mutate=False)
            except ClientError as err:
                errors.append(f"{u.uid}: {err.code}")
                continue
            if (again.payload or {}).get("revision") != online[0].last_rev:
                continue                      # it moved on meanwhile (a track ended): nothing to compare
            st = res.payload or {}
            (active, playing, uri), = views
            if st.get("is_playing") != playing or ((st.get("item") or {}).get("uri")) != uri \
                    or ((st.get("device") or {}).get("id")) != active:
                n_div += 1
                diverged.append(f"{u.uid}: devices show {active}/{playing}/{uri}, server "
                                f"{(st.get('device') or {}).get('id')}/{st.get('is_playing')}/"
                                f"{(st.get('item') or {}).get('uri')}")
        dup_versions = 0
        for u in self.users:
            vs = [v for v, _ in u.acked if isinstance(v, int)]
            if len(set(vs)) != len(vs):
                dup_versions += len(vs) - len(set(vs))
                seen = set()
                for v, op in u.acked:
                    if v in seen:
                        self.ledger.missing.add((u.uid, v, op))
                    seen.add(v)
        gaps = sum(d.gaps for u in self.users for d in u.devs)
        ooo = sum(d.out_of_order for u in self.users for d in u.devs)
        ok = n_div == 0 and behind == 0 and self.lost == 0 and ooo == 0 and dup_versions == 0 \
            and not errors and self.transfers_lost == 0 and gaps == 0
        return {"ok": ok, "users": len(self.users), "replicas_checked": sum(len(u.online()) for u in self.users),
                "diverged": n_div, "devices_behind": behind, "lost_states": self.lost, "revision_gaps": gaps,
                "setup_revision_gaps": self.setup_gaps,
                "transfers_not_playing": self.transfers_lost, "out_of_order": ooo,
                "acked_changes": len(self.ledger.acked), "acked_versions_reused": dup_versions,
                "acked_missing": len(self.ledger.missing), "read_errors": len(errors),
                "missing_examples": diverged[:10] + errors[:5]}

    def extra_report(self) -> dict:
        cmd = [ms for _, ms in self.rec.lat.get("w2:command", ())]
        tr = [ms for _, ms in self.rec.lat.get("w2:transfer", ())]
        refused = {k.split(":", 1)[1]: v for k, v in self.rec.counters.items() if k.startswith("refused:")}
        return {"w2": {"users": len(self.users), "devices_per_user": int(self.p["devices"]),
                       "period_s": round(1 / float(self.p["rate"]), 3) if float(self.p["rate"]) else None,
                       "command_to_all_devices_ms": summarize(cmd), "transfer_to_playing_ms": summarize(tr),
                       "lost_states": self.lost, "transfers_not_playing": self.transfers_lost,
                       "revision_gaps": sum(d.gaps for u in self.users for d in u.devs),
                       "out_of_order": sum(d.out_of_order for u in self.users for d in u.devs),
                       "refused": refused,
                       "targets": {"command_p99_ms": 15, "transfer_p99_ms": 25}}}
