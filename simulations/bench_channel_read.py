"""What a host-channel frame costs its reader: asyncio's StreamReader (`readexactly` in a task)
against actors/framing.py's data_received hand-off, with the same work per frame (an answer).

    .venv/bin/python simulations/bench_channel_read.py --mode framing|stream [--streams 4] [--rounds 5000]

The server (this process) accepts S streams; a client process (not this one: under callgrind only the
server is counted) writes one small length-prefixed frame on each stream per round and waits for
every answer before the next round, so each read carries one frame, as the channel's streams mostly
do under W2. It prints the server's CPU (time.process_time) per frame; for instructions run it under
callgrind at two round counts and divide the difference by the extra frames (as
simulations/bench_ws_inbound.py).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.channel import HEADER, pack, unpack  # noqa: E402
from actors.framing import take_over  # noqa: E402

CLIENT = r"""
import asyncio, struct, sys
port, streams, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
H = struct.Struct(">I")
async def main():
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(streams)]
    body = bytes.fromhex(sys.argv[4])
    frame = H.pack(len(body)) + body
    for _ in range(rounds):
        for r, w in conns:
            w.write(frame)
        for r, w in conns:
            (n,) = H.unpack(await r.readexactly(4))
            await r.readexactly(n)
    for r, w in conns:
        w.close()
asyncio.run(main())
"""
ANSWERED = [0]
REPLY = pack([["r", 1, 7, {"ok": True}]])


def answer(writer: asyncio.StreamWriter, body: bytes) -> None:
    unpack(body)
    ANSWERED[0] += 1
    writer.write(REPLY)


async def serve(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        if mode == "framing":
            await take_over(reader, writer, lambda body: answer(writer, body), 1 << 20)
        else:
            while True:
                (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                answer(writer, await reader.readexactly(n))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(args) -> None:
    server = await asyncio.start_server(lambda r, w: serve(args.mode, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = pack([["c", 1, ["devicegroup", "u00001", "pause", {"device_id": "d0"}, ["u00001", "premium"]]]])[4:]
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(args.streams), str(args.rounds), body.hex())
    c0 = time.process_time()
    rc = await client.wait()
    cpu = time.process_time() - c0
    server.close()
    frames = args.streams * args.rounds
    if rc != 0 or ANSWERED[0] != frames:
        sys.exit(f"the client failed (exit {rc}) or frames went unanswered ({ANSWERED[0]} of {frames})")
    print(f"{args.mode}: {frames} frames over {args.streams} streams, server CPU {cpu * 1e6 / frames:.1f} us/frame")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("framing", "stream"), required=True)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5000)
    asyncio.run(main(ap.parse_args()))
