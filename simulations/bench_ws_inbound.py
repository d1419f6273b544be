"""What a client frame costs the gateway to take off the socket: aiohttp's `async for` against
gateway/inbox.py's data_received hand-off, with the same session work (an answer per frame).

    .venv/bin/python simulations/bench_ws_inbound.py --mode inbox|queue [--sockets 200] [--rounds 50]

The server (this process) serves S websockets; a client process (not this one: under callgrind only
the server is counted) sends one small JSON frame on each socket per round and waits for every
answer before the next round, as W2's devices do: each read carries one frame. The handler answers
each frame through gateway/wsframes.py's writer in both modes, so the modes differ only in how a
frame reaches it. It prints the server's CPU (time.process_time) per frame. For instructions, which
do not move with the machine's load, run it under callgrind at two round counts and divide the
difference by the extra frames:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python \\
        simulations/bench_ws_inbound.py --mode inbox --rounds 20    # and --rounds 40
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import orjson
from aiohttp import WSMsgType, web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.inbox import InboxResponse  # noqa: E402
from gateway.wsframes import FrameWriter  # noqa: E402

CLIENT = r"""
import asyncio, sys, aiohttp
url, sockets, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        wss = [await http.ws_connect(url) for _ in range(sockets)]
        frame = '{"id":1,"type":"player.pause","payload":{"device_id":"d0"}}'
        for _ in range(rounds):
            for ws in wss:
                await ws.send_str(frame)
            for ws in wss:
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
        for ws in wss:
            await ws.close()
asyncio.run(main())
"""


ANSWERED = [0]


def answer(writer: FrameWriter, data) -> None:
    env = orjson.loads(data)
    ANSWERED[0] += 1
    writer.write_now([orjson.dumps({"id": env["id"], "type": "result", "payload": None}).decode()])


async def handler(request: web.Request) -> web.WebSocketResponse:
    mode = request.app["mode"]
    ws = (InboxResponse if mode == "inbox" else web.WebSocketResponse)(compress=False)
    await ws.prepare(request)
    writer = FrameWriter(ws)
    if mode == "inbox":
        ws.inbox.attach(lambda data, is_text: answer(writer, data))
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    else:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                answer(writer, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    return ws


async def main(args) -> None:
    app = web.Application()
    app["mode"] = args.mode
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/ws", str(args.sockets), str(args.rounds))
    c0 = time.process_time()
    rc = await client.wait()
    cpu = time.process_time() - c0
    await runner.cleanup()
    frames = args.sockets * args.rounds
    if rc != 0 or ANSWERED[0] != frames:
        sys.exit(f"the client failed (exit {rc}) or frames went unanswered ({ANSWERED[0]} of {frames})")
    print(f"{args.mode}: {frames} frames over {args.sockets} sockets, server CPU {cpu * 1e6 / frames:.1f} us/frame "
          f"(set-up and close included)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("inbox", "queue"), required=True)
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=50)
    asyncio.run(main(ap.parse_args()))
