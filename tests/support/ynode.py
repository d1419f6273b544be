"""A Node Yjs client (tests/node/yclient.mjs: the real y-websocket provider) driven from Python over
its stdin/stdout protocol: YNode is the process, Y one document in it on one socket."""
from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import orjson

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "yclient.mjs"
_ids = itertools.count(1)


class YNode:
    """One Node process holding any number of named Yjs clients (tests/node/yclient.mjs)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.proc = None
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.stderr: list[str] = []

    async def start(self) -> "YNode":
        self.proc = await asyncio.create_subprocess_exec(
            self.node, str(SCRIPT), cwd=str(NODE_DIR), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=64 << 20)
        loop = asyncio.get_running_loop()
        self._out = loop.create_task(self._read_out())
        self._err = loop.create_task(self._read_err())
        return self

    async def _read_out(self) -> None:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            msg = orjson.loads(line)
            fut = self.pending.pop(msg.get("rid"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(AssertionError(f"node exited: {self.tail()}"))

    async def _read_err(self) -> None:
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.stderr.append(line.decode(errors="replace").rstrip())

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.stderr[-n:])

    async def cmd(self, op: str, *, check: bool = True, timeout: float = 60.0, **kw) -> dict:
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.proc.stdin.write(orjson.dumps({"rid": rid, "op": op, **kw}) + b"\n")
        await self.proc.stdin.drain()
        try:
            msg = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"node did not answer {op} {kw.get('c', '')} in {timeout} s "
                                 f"(exit code {self.proc.returncode}); stderr:\n{self.tail()}") from None
        if check and not msg.get("ok"):
            raise AssertionError(f"{op} {kw.get('c', '')}: {msg.get('error')} state={msg.get('state')}\n"
                                 f"node stderr:\n{self.tail()}")
        return msg

    async def close(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            self.proc.stdin.write(b'{"op": "quit"}\n')
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 5)
        except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(self._out, self._err, return_exceptions=True)


class Y:
    """One named Yjs client inside a YNode."""

    def __init__(self, node: YNode, name: str, user: str) -> None:
        self.node, self.c, self.user = node, name, user

    async def open(self, base: str, pid: str, token: str, **kw) -> "Y":
        await self.node.cmd("open", c=self.c, base=base, room=pid, token=token, **kw)
        return self

    async def wait(self, timeout: float = 10.0, **cond) -> dict:
        return (await self.node.cmd("wait", c=self.c, timeout_ms=int(timeout * 1000), timeout=timeout + 30,
                                    **cond))["state"]

    async def try_wait(self, timeout: float = 10.0, **cond) -> tuple[bool, dict]:
        msg = await self.node.cmd("wait", c=self.c, timeout_ms=int(timeout * 1000), timeout=timeout + 30,
                                  check=False, **cond)
        return bool(msg.get("ok")), msg["state"]

    async def state(self) -> dict:
        return (await self.node.cmd("state", c=self.c))["state"]

    async def seen(self) -> dict:
        return await self.node.cmd("seen", c=self.c)

    async def do(self, op: str, **kw) -> dict:
        return await self.node.cmd(op, c=self.c, **kw)

    def entry(self, uri: str, eid: str | None = None, **over) -> dict:
        e = {"id": eid or f"y{next(_ids)}x{int(time.time() * 1000) % 100000}", "uri": uri, "added_by": self.user,
             "added_at": int(time.time() * 1000)}
        e.update(over)
        return e

    async def insert(self, *entries: dict, index: int | None = None) -> list[str]:
        kw = {} if index is None else {"index": index}
        await self.do("insert", entries=list(entries), **kw)
        return [e["id"] for e in entries]


def ybase(url: str) -> str:
    return url.replace("http://", "ws://", 1) + "/v1/yjs/playlists"
