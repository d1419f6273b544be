"""Host CPU per player command (W2's path), in one process: no Ray, no sockets, a real SQLite store.

    nice -n 19 .venv/bin/python -m simulations.bench_host_cycle [--users 200] [--commands 2000]
                                                                [--repeats 5] [--batch 1] [--dir DIR]
                                                                [--ticks ROUNDS] [--profile FILE.pstats]

What runs: one EntityHost (actors/host.py) over SQLiteStore (storage/sqlite.py: its own thread,
WAL, synchronous=FULL, a file in a temp dir) with the default kinds and the generated catalog, and
the host side of the gateway channel (actors/channel.py): each gateway frame is decoded and handed
to the host as ChannelServer._take does, and everything the host releases goes through
ChannelServer.send (encode_host_items, frames_of) into a writer that only counts bytes. Set-up as
W2's (simulations/scenarios/connect.py): --users users x 3 devices registered (following the group,
one connection each on gateway g0), dev0 playing a 50-track list, repeat context.

Measured: --commands commands as W2 sends them (connect.py `_command`: transfer 10 %, else
pause/play 50 %, volume 20 %, seek 15 %, next 15 %), each from one of the user's devices with an
op id, in frames of --batch commands (distinct users) sent one after the other: a frame's answers
are awaited before the next frame goes (at W2's rates a host's group commits hold about one
command). The command list is built (and its frames encoded) before the clock starts; the figure is
time.process_time() over the run (the loop and the store's thread: the host process's CPU) per
command, best and median of --repeats runs on the same host (warm entities). The housekeeping
task (ticks, passivation) and the collector are not started: only the command path is measured. Also
printed: user and system CPU (os.times) and the event loop's thread alone (time.thread_time).
With --ticks, then CPU per tick: rounds of Residency.run_ticks over every group (none has anything
due: the devices' heartbeat timeout is set out of reach for the whole bench), each round run to
its end.

On a loaded machine the CPU figures move by up to 40 % run to run (alternate old and new runs);
instructions are steadier. Under callgrind, the instructions per command are the difference of two
runs, which cancels the set-up (it keeps the bench's own building of each command's frame):
    (Ir of --repeats 3) - (Ir of --repeats 1), divided by 2 x --commands
    nice -n 19 valgrind --tool=callgrind .venv/bin/python -m simulations.bench_host_cycle --users 50 \
        --commands 200 --repeats 1     (then --repeats 3; about two minutes each)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time

from simulations.scenarios.connect import w2_command


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:  # pragma: no cover - never over the budget here
        pass


class _Writer:
    """Stands for the gateway's stream: counts what the host writes to it."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.bytes = 0
        self.frames = 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.frames += 1

    def close(self) -> None:
        pass


W2_OPS = ("transfer", "pause/play", "volume", "seek", "next")


class _User:
    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.active = "dev0"
        self.playing = True


def _commands(users: list[_User], n: int, rng: random.Random, transfer_share: float = 0.1) -> list[tuple]:
    """(user, op, args, device index) for n commands, chosen as connect.py's `_command` does, against
    the state the commands before it leave (every one of them succeeds)."""
    out = []
    for _ in range(n):
        u = rng.choice(users)
        src = rng.randrange(3)
        r = rng.random()
        if r < transfer_share:
            target = rng.choice([d for d in ("dev0", "dev1", "dev2") if d != u.active])
            out.append((u.uid, "transfer", {"device_ids": [target], "play": True}, src))
            u.active, u.playing = target, True
            continue
        op, args = w2_command(rng, u.playing, 120_000)
        op = op.removeprefix("player.")
        out.append((u.uid, op, args, src))
        if op in ("pause", "play"):
            u.playing = not u.playing
    return out


class Bench:
    def __init__(self, a) -> None:
        self.a = a

    async def setup(self) -> None:
        from actors.batching import Batcher
        from actors.channel import ChannelServer
        from actors.entity import Env
        from actors.host import EntityHost
        from actors.kinds import default_kinds
        from catalog import Catalog
        from storage.sqlite import SQLiteStore

        self.tmp = tempfile.TemporaryDirectory(prefix="bench-host-cycle-", dir=self.a.dir)
        self.catalog = Catalog.generated()
        self.tracks = [t.uri for t in self.catalog.tracks][:50]
        self.store = SQLiteStore(f"{self.tmp.name}/syncopate.db")
        await self.store.start()
        self.channel: ChannelServer | None = None
        # as actors/ray_host.py: what the host releases in one loop turn goes to a gateway together
        self.batcher = Batcher(lambda gw, items: self.channel.send(gw, items))
        # no device goes silent while the bench runs (W2's devices heartbeat; here nothing does)
        env = Env(catalog=self.catalog, config={"connect_heartbeat_timeout_ms": 10**12})
        self.host = EntityHost("bench", self.store, default_kinds(), env,
                               deliver=self.batcher.add, idle_timeout_s=1e9)
        # the committer only: no ticks, no passivation (module doc)
        self.host._tasks = [asyncio.get_running_loop().create_task(self.host._committer())]
        self.channel = ChannelServer(self.host, "x" * 32, 0)
        self.writer = _Writer()
        self.channel.writers["g0"] = self.writer
        # the answers are counted (errors by code) on their way to the channel: a frame is done
        # when all of its commands are answered
        self.waiting = 0
        self.done = asyncio.Event()
        self.errors: dict[str, int] = {}
        send = self.channel.send

        def counting_send(gw: str, items: list) -> None:
            for it in items:
                if type(it) is tuple:
                    if it[2].error is not None:
                        code = it[2].error.code.value
                        self.errors[code] = self.errors.get(code, 0) + 1
                    self.waiting -= 1
            send(gw, items)
            if self.waiting <= 0:
                self.done.set()

        self.batcher._send = counting_send
        self.users = [_User(f"bu{i}") for i in range(self.a.users)]
        self.ops = 0
        self.user_s = self.sys_s = self.loop_s = 0.0
        from actors.entity import Command
        setup = []
        for u in self.users:
            for k in range(3):
                setup.append([Command("devicegroup", u.uid, "register", {
                    "device_id": f"dev{k}", "name": f"{u.uid} dev{k}", "type": ("smartphone", "computer", "speaker")[k],
                    "volume_percent": 50, "supports_volume": True, "is_restricted": False},
                    self._principal(u.uid, k), op_id=self._op_id(), origin=("g0", f"{u.uid}.{k}"), follow=True)])
        await self._run_frames(self._encode(setup))
        await self._run_frames(self._encode([[Command("devicegroup", u.uid, "play", {"uris": self.tracks, "device_id": "dev0"},
                                                      self._principal(u.uid, 0), op_id=self._op_id(),
                                                      origin=("g0", f"{u.uid}.0"))] for u in self.users]))
        await self._run_frames(self._encode([[Command("devicegroup", u.uid, "repeat", {"state": "context"},
                                                      self._principal(u.uid, 0), op_id=self._op_id(),
                                                      origin=("g0", f"{u.uid}.0"))] for u in self.users]))
        if self.errors:
            raise SystemExit(f"set-up failed: {self.errors}")

    def _principal(self, uid: str, k: int):
        from actors.entity import Principal
        return Principal(uid, "premium", f"dev{k}", issued_at=1)

    def _op_id(self) -> str:
        self.ops += 1
        return f"gbench.{self.ops}"

    def _encode(self, frames: list[list]) -> list[bytes]:
        """Each frame's commands as the gateway sends them (actors/channel.py encode_requests): the
        body of one length-prefixed frame."""
        from actors.channel import encode_requests
        out = []
        token = 0
        for cmds in frames:
            reqs = []
            for c in cmds:
                token += 1
                reqs.append((token, c))
            (frame,), refused = encode_requests(reqs)
            assert not refused
            out.append((frame[4:], len(cmds)))
        return out

    async def _run_frames(self, frames: list) -> None:
        from actors.channel import decode_requests
        from protocols.wire import unpack_commands
        for body, n in frames:
            self.waiting = n
            self.done.clear()
            # as ChannelServer._serve: unpack_commands and decode_requests, then _take
            self.channel._take("g0", *decode_requests(*unpack_commands(body)))
            await self.done.wait()

    def frames(self, rng: random.Random) -> list:
        from actors.entity import Command
        cmds = _commands(self.users, self.a.commands, rng)
        frames: list[list] = []
        cur: list = []
        seen: set = set()
        for uid, op, args, k in cmds:
            if len(cur) >= self.a.batch or uid in seen:
                frames.append(cur)
                cur, seen = [], set()
            cur.append(Command("devicegroup", uid, op, args, self._principal(uid, k), op_id=self._op_id(),
                               origin=("g0", f"{uid}.{k}")))
            seen.add(uid)
        if cur:
            frames.append(cur)
        return self._encode(frames)

    async def run_once(self, rng: random.Random) -> tuple[float, float]:
        frames = self.frames(rng)
        t0, w0, o0, l0 = time.process_time(), time.perf_counter(), os.times(), time.thread_time()
        await self._run_frames(frames)
        cpu, wall, o1 = time.process_time() - t0, time.perf_counter() - w0, os.times()
        self.loop_s += time.thread_time() - l0
        self.user_s += o1.user - o0.user
        self.sys_s += o1.system - o0.system
        return cpu, wall

    async def ticks(self, rounds: int) -> float:
        """CPU seconds of `rounds` rounds of every group's tick (nothing due in them: a W2 host
        ticks each of its groups once a second, about two ticks per command)."""
        # (each round's `now` a second past the last: every group is due in every round)
        now = self._tick_now = max(getattr(self, "_tick_now", 0.0), time.time()) + 1.0
        n0 = self.host.metrics.commands
        t0 = time.process_time()
        for _ in range(rounds):
            self.host.run_ticks(now)
            while any(s.mailbox or s.draining for s in self.host.slots.values()) or self.host._pending:
                await asyncio.sleep(0)
            now += 1.0
        cpu = time.process_time() - t0
        self._tick_now = now
        assert self.host.metrics.commands - n0 == rounds * len(self.users), "a group did not tick"
        return cpu

    async def close(self) -> None:
        await self.host.close(passivate=False)
        await self.store.close()
        self.tmp.cleanup()


async def _main(a) -> int:
    b = Bench(a)
    await b.setup()
    rng = random.Random(a.seed)
    await b.run_once(rng)                 # warm-up: every entity has run every op
    cpu_us, wall_us = [], []
    prof = None
    if a.profile:
        import cProfile
        # the loop's thread's CPU, not wall time (on a loaded machine wall time is mostly waiting)
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
    u0, s0, l0 = b.user_s, b.sys_s, b.loop_s
    for _ in range(a.repeats):
        cpu, wall = await b.run_once(rng)
        cpu_us.append(cpu * 1e6 / a.commands)
        wall_us.append(wall * 1e6 / a.commands)
    n = a.commands * a.repeats
    user_us, sys_us = (b.user_s - u0) * 1e6 / n, (b.sys_s - s0) * 1e6 / n
    loop_us = (b.loop_s - l0) * 1e6 / n
    if prof is not None:
        prof.disable()
        prof.dump_stats(a.profile)
    tick_us = []
    for _ in range(a.repeats if a.ticks else 0):
        tick_us.append(await b.ticks(a.ticks) * 1e6 / (a.ticks * a.users))
    if b.errors:
        print(f"errors: {b.errors}", file=sys.stderr)
    await b.close()
    print(f"host cycle: {a.users} users x 3 devices, {a.commands} commands x {a.repeats}, batch {a.batch}: "
          f"CPU us/command best {min(cpu_us):.1f} median {statistics.median(cpu_us):.1f} "
          f"(runs {' '.join(f'{x:.1f}' for x in cpu_us)}); wall us/command median {statistics.median(wall_us):.1f}; "
          f"user {user_us:.0f} sys {sys_us:.0f} us/command (os.times), the loop's thread {loop_us:.0f} (all runs)")
    if tick_us:
        print(f"ticks: {a.users} groups x {a.ticks} rounds x {a.repeats}: CPU us/tick best {min(tick_us):.1f} "
              f"median {statistics.median(tick_us):.1f}")
    return 1 if b.errors else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--commands", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="commands per gateway frame (distinct users)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ticks", type=int, default=0, help="then this many rounds of every group's tick, per repeat")
    ap.add_argument("--dir", default=None, help="where the temp SQLite file goes (default: the temp dir)")
    ap.add_argument("--profile", default=None, help="cProfile the measured runs (the loop's thread CPU) into this file")
    return asyncio.run(_main(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
