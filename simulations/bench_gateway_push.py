"""The gateway's CPU per W2 push, in one process, without sockets or hosts.

    PYTHONPATH=<tree> .venv/bin/python simulations/bench_gateway_push.py [--users 1000] [--pushes 50000] [--repeat 5]

What one W2 command costs the gateway after the host answered it: the `player.changed` push routed
to the user's three device sockets (gateway/subscriptions.py: presented once, the active device's
copy with its stream manifest, gateway/streams.py), the frames of the turn handed to each socket's
writer (gateway/hub.py; the writer here keeps the bytes instead of a system call), and the owning
host of the command's key looked up once (gateway/dispatcher.py `host_of`). The device-group states
are built like actors/devicegroup.py's `cluster()`, with W2's mix of commands (10 % transfers, the rest from
simulations/scenarios/connect.py `w2_command`: 50 % pause/play, 20 % volume, 15 % seek, 15 % next).

It prints the CPU time (time.process_time) per push, best and median of --repeat rounds: on a shared
machine CPU time moves much less than wall time, and the best round is the least disturbed. Run it
from each tree of a pair (the script path may be the other tree's: only PYTHONPATH decides which
gateway is measured).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time


class _Sink:
    """A socket's writer without the socket: write_now keeps the byte count, never backpressured."""

    def __init__(self) -> None:
        self.bytes = 0

    def write_now(self, frames: list) -> bool:
        for f in frames:
            self.bytes += len(f)
        return False

    async def drain(self) -> None:
        return None

    async def send_raw(self, frame) -> None:
        self.bytes += len(frame)

    async def close(self, code: int, reason: str) -> None:
        return None


class _Ctx:
    def __init__(self, catalog, signer) -> None:
        self.catalog, self.signer = catalog, signer


class _Transport:
    n_hosts = 2


def _state(rng: random.Random, uid: str, tracks: list[str], st: dict, now: int) -> dict:
    from simulations.scenarios.connect import w2_command
    if rng.random() < 0.1:                     # W2's transfer share (scenarios/connect.py)
        st["active"] = rng.randrange(3)
        st["playing"] = True
    else:                                      # the rest of its mix, drawn as W2 draws it
        op, args = w2_command(rng, st["playing"], 120_000)
        if op in ("player.pause", "player.play"):
            st["playing"] = op == "player.play"
        elif op == "player.volume":
            st["volume"] = args["volume_percent"]
        elif op == "player.seek":
            st["position"] = args["position_ms"]
        else:
            st["index"] = (st["index"] + 1) % 50
    st["revision"] += 1
    active = f"{uid}-d{st['active']}"
    devs = [{"id": f"{uid}-d{k}", "name": f"Device {k}", "type": "computer", "volume_percent": st["volume"],
             "supports_volume": True, "is_restricted": False, "online": True, "active": f"{uid}-d{k}" == active}
            for k in range(3)]
    i = st["index"]
    return {"active_device_id": active, "devices": devs,
            "player": {"track_uri": tracks[i], "context": {"uri": None, "index": i}, "queue": [], "shuffle": False,
                       "repeat": "context", "is_playing": st["playing"], "position_as_of_timestamp": st["position"],
                       "timestamp": now, "playback_speed": 1.0 if st["playing"] else 0.0, "duration": 120_000,
                       "volume_percent": st["volume"], "playback_id": f"pb{st['revision']}", "market": "US",
                       "autoplay": {"enabled": False, "active": False, "from": None}},
            "revision": st["revision"], "reason": "command", "server_time_ms": now,
            "next_tracks": [tracks[(i + 1) % 50], tracks[(i + 2) % 50]]}


async def run(users: int, pushes: int, repeat: int, seed: int) -> dict:
    from actors.entity import Principal
    from catalog import Catalog
    from gateway import presenters
    from gateway.dispatcher import Dispatcher
    from gateway.hub import Connection, Hub
    from gateway.stream_sign import StreamSigner
    from gateway.streams import StreamManifests
    from gateway.subscriptions import Subscriptions
    from protocols import codec
    from protocols.messages import DEVICE_GROUP, MessageType
    from protocols.wire import Push, Reply

    cat = Catalog.generated()
    tracks = [f"spotify:track:{i}" for i in cat.track_ids if cat.track_by_uri(f"spotify:track:{i}").playable_in("US")][:50]
    if len(tracks) < 50:
        raise SystemExit("the generated catalog has no tracks")
    rng = random.Random(seed)
    hub = Hub("gw")
    dispatcher = Dispatcher("gw", _Transport(), lambda push: None)
    streams = StreamManifests(_Ctx(cat, StreamSigner("x" * 32)))
    subs = Subscriptions("gw", hub, dispatcher, pushes=presenters.ws_pushes(cat),
                         personal={MessageType.PLAYER_CHANGED.value: streams.personal})
    sinks: list[_Sink] = []
    states: dict[str, dict] = {}
    now = int(time.time() * 1000)

    class _Quiet:
        def request(self, cmd, callback):
            callback(Reply(1, {}))

        def host_of(self, key):
            return 0

    subs.dispatcher = _Quiet()            # joins answered at once; host_of below is the real one's
    for u in range(users):
        uid = f"u{u:05d}"
        states[uid] = {"active": 0, "playing": True, "volume": 50, "position": 0, "index": 0, "revision": 0}
        for k in range(3):
            s = _Sink()
            sinks.append(s)
            c = Connection(hub.new_id(), Principal(uid, product="premium"), encoding=codec.JSON, client="w2",
                           device_id=None, send_raw=s.send_raw, close=s.close, write_now=s.write_now,
                           drain=s.drain)
            c.registered_device = f"{uid}-d{k}"
            hub.add(c)
            subs.subscribe(c, f"{DEVICE_GROUP}:{uid}")
    await asyncio.sleep(0)
    uids = list(states)
    rounds = []
    version = 1
    for _ in range(repeat + 1):                    # the first round warms up (manifests, caches)
        batch = []
        for _ in range(pushes):
            uid = rng.choice(uids)
            version += 1
            batch.append(Push(f"{DEVICE_GROUP}:{uid}", version, MessageType.PLAYER_CHANGED.value,
                              _state(rng, uid, tracks, states[uid], now), user=uid))
        t0 = time.process_time()
        for i, push in enumerate(batch):
            dispatcher.host_of(push.key)
            subs.route(push)
            if i % 4 == 3:
                await asyncio.sleep(0)             # a loop turn: the sockets' frames are written
        await asyncio.sleep(0)
        rounds.append((time.process_time() - t0) / pushes * 1e6)
    rounds = rounds[1:]
    return {"us_per_push_best": round(min(rounds), 2), "us_per_push_median": round(statistics.median(rounds), 2),
            "rounds": [round(r, 2) for r in rounds], "bytes": sum(s.bytes for s in sinks)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--pushes", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    import gateway
    out = asyncio.run(run(a.users, a.pushes, a.repeat, a.seed))
    print(f"gateway push path ({gateway.__file__}): {out['us_per_push_best']} us CPU per push best, "
          f"{out['us_per_push_median']} median, rounds {out['rounds']}, {out['bytes']} bytes written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
