"""Unmodified Node Yjs clients (yjs + y-websocket) driven from Python: simulations/node/yjs_editor.mjs.

The npm packages are installed on first use into a cache directory (not the repository):
$SYNCOPATE_SIM_NODE_DIR, default ~/.cache/syncopate/sim-node. The script is copied next to its
node_modules there, so Node resolves the packages from the script's own directory.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("syncopate.sim.yjs")
HERE = Path(__file__).resolve().parent / "node"


def node_dir() -> Path:
    return Path(os.environ.get("SYNCOPATE_SIM_NODE_DIR", Path.home() / ".cache" / "syncopate" / "sim-node"))


def ensure_node(timeout: float = 600.0) -> Path:
    """Install the npm packages once; returns the directory holding yjs_editor.mjs and node_modules."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for Yjs clients (or run collab with --yjs-share 0)")
    d = node_dir()
    d.mkdir(parents=True, exist_ok=True)
    pkg = (HERE / "package.json").read_text()
    stamp = d / ".installed"
    if not (stamp.exists() and stamp.read_text() == pkg and (d / "node_modules" / "yjs").exists()):
        (d / "package.json").write_text(pkg)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=d, check=True, timeout=timeout)
        stamp.write_text(pkg)
    shutil.copy(HERE / "yjs_editor.mjs", d / "yjs_editor.mjs")
    return d


class YjsEditors:
    """One Node process holding many Yjs clients. Events arrive as dicts through `on_event`."""

    def __init__(self, config: dict, on_event: Callable[[dict], None]) -> None:
        self.config = config
        self.on_event = on_event
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self.finals: dict[int, dict] = {}
        self.stderr_tail: list[str] = []
        self._cfg_file: str | None = None

    async def start(self, timeout: float = 60.0) -> dict:
        d = await asyncio.get_running_loop().run_in_executor(None, ensure_node)
        self._cfg_file = await asyncio.get_running_loop().run_in_executor(None, self._write_config)
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(d / "yjs_editor.mjs"), self._cfg_file, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=64 * 2**20)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        asyncio.get_running_loop().create_task(self._read_err())
        return await self.wait_for("ready", timeout)

    def _write_config(self) -> str:
        fd, path = tempfile.mkstemp(prefix="yjs-editors-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.config, f)
        return path

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("ev") == "final":
                self.finals[ev["k"]] = ev
            try:
                self.on_event(ev)
            except Exception:
                log.exception("yjs event handler failed")
            for name, fut in list(self._waiters):
                if name == ev.get("ev") and not fut.done():
                    fut.set_result(ev)
                    self._waiters.remove((name, fut))
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(RuntimeError("the Yjs client process exited: " + " | ".join(self.stderr_tail[-5:])))

    async def _read_err(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.stderr_tail.append(line.decode(errors="replace").rstrip())
            del self.stderr_tail[:-50]

    async def wait_for(self, ev: str, timeout: float) -> dict:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((ev, fut))
        return await asyncio.wait_for(fut, timeout)

    async def send(self, cmd: str) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write((cmd + "\n").encode())
        await self.proc.stdin.drain()

    async def go(self) -> None:
        await self.send("go")

    async def final(self, timeout: float = 30.0) -> dict[int, dict]:
        self.finals = {}
        waiter = asyncio.ensure_future(self.wait_for("finals_done", timeout))
        await asyncio.sleep(0)
        await self.send("final")
        await waiter
        return dict(self.finals)

    async def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.returncode is None:
                await self.send("quit")
                await asyncio.wait_for(self.proc.wait(), 10)
        except Exception:  # noqa: BLE001 - whatever went wrong, the process must go
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        if self._cfg_file:
            try:
                os.unlink(self._cfg_file)
            except OSError:
                pass
