"""SQLite with its connection in a process of its own: the commit path off the host's GIL.

storage/sqlite.py runs the blocking sqlite3 calls on a thread of the host process. Every call
releases the GIL around SQLite's work and must take it back after: a group commit is four such
calls (BEGIN IMMEDIATE, the epoch check, the inserts, COMMIT), and while the event loop is busy
applying commands each take-back waits up to the interpreter's switch interval. Measured under load
(docs/performance.md, "where the time goes"), group commits averaged 2.4 ms for ~8.5 entries, most
of it those waits rather than the fsync.

Here the same thread-side methods of SQLiteStore run in a child process (`python -m
storage.sqlite_process PATH`), which has its own interpreter and GIL. The host's loop writes each
call to the child's stdin (a length-prefixed pickle) and reads the answers from its stdout, in
order, without a thread. Nothing about durability changes: the child answers an append after its
COMMIT returned (synchronous=FULL), and the host acknowledges only after that answer.

Failures: a call the child could not run answers a STORE_UNAVAILABLE (as the thread version
raises); if the child dies, every call in flight and every later one fails with STORE_UNAVAILABLE
(the host treats an append's as an unknown outcome: not acknowledged, re-read on activation). The
child exits when its stdin closes, i.e. when the host process goes away, however it goes.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections import deque

from protocols.errors import ErrorCode, SyncopateError
from storage.sqlite import SQLiteStore

_LEN = struct.Struct("!I")
# SQLiteStore's thread-side methods (every public method of it reaches one through `_run`)
_CALLS = frozenset({"_open", "_acquire", "_write", "_open_lease", "_renew_lease", "_membership",
                    "_change_membership", "_drop_dead", "_load", "_append", "_write_snapshot", "_erase", "_purge",
                    "_ping", "_close"})


class SQLiteProcessStore(SQLiteStore):
    """SQLiteStore's interface and semantics; its connection lives in a child process."""

    def __init__(self, path, *, secure_delete: bool = True) -> None:
        super().__init__(path, secure_delete=secure_delete)
        self._pool.shutdown(wait=False)        # no thread: the child process does the work
        self._proc: subprocess.Popen | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._waiting: deque[asyncio.Future] = deque()
        self._reader: asyncio.Task | None = None
        self._gone: SyncopateError | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)   # the host's code, whatever its path
        # Popen waits on the child's exec (a blocking read): off the loop
        self._proc = await loop.run_in_executor(None, lambda: subprocess.Popen(
            [sys.executable, "-m", "storage.sqlite_process", self.path, "1" if self.secure_delete else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True))
        reader = asyncio.StreamReader(limit=1 << 30)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self._proc.stdout)
        self._writer, _ = await loop.connect_write_pipe(asyncio.Protocol, self._proc.stdin)
        self._reader = loop.create_task(self._read(reader))
        await self._call("_open")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
                ok, value = pickle.loads(await reader.readexactly(n))
                fut = self._waiting.popleft()          # the child answers in the order it was asked
                if not fut.done():                     # its caller may have been cancelled meanwhile
                    fut.set_result(value) if ok else fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._fail_all(f"the store process exited ({type(exc).__name__})")
        except asyncio.CancelledError:
            self._fail_all("the store is closed")
            raise

    def _fail_all(self, why: str) -> None:
        self._gone = SyncopateError(ErrorCode.STORE_UNAVAILABLE, f"sqlite: {why}")
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(self._gone)

    async def _call(self, name: str, *args):
        if self._gone is not None:
            raise self._gone
        if self._writer is None or self._writer.is_closing():
            raise SyncopateError(ErrorCode.STORE_UNAVAILABLE, "sqlite: the store is not started")
        data = pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._writer.write(_LEN.pack(len(data)) + data)
        # Cancellation here leaves the call running in the child (its answer is read and dropped):
        # as with the thread version, the caller must treat an append's outcome as unknown.
        return await fut

    async def close(self) -> None:
        if self._proc is None:
            return
        if self._gone is None:
            try:
                await self._call("_close")
            except SyncopateError:
                pass
        if self._writer is not None:
            self._writer.close()                       # EOF on the child's stdin: it exits
        if self._reader is not None:
            self._reader.cancel()
        proc, self._proc = self._proc, None
        await asyncio.get_running_loop().run_in_executor(None, _reap, proc)

    def timing(self) -> dict:
        return {}        # the appends run in the child: the host-side counters would stay at zero

    async def _run(self, fn, *args):
        """SQLiteStore's public methods call their thread-side method through here: run it in the child."""
        name = getattr(fn, "__name__", "")
        if getattr(fn, "__self__", None) is not self or name not in _CALLS:
            raise SyncopateError(ErrorCode.INTERNAL, f"sqlite: {name or fn!r} cannot run in the store process")
        return await self._call(name, *args)

    async def ping(self) -> bool:
        try:
            return await self._call("_ping")
        except SyncopateError:
            return False


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the child ------------------------------------------------------------------------------------
class _Worker(SQLiteStore):
    def _ping(self) -> bool:
        return self._db.execute("SELECT 1").fetchone()[0] == 1

    def _close(self) -> None:
        self._stop.set()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._wlock.close()


def _serve(path: str, secure_delete: bool) -> None:
    import sqlite3

    from storage.base import unavailable

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr                    # a stray print must not corrupt the answers
    store = _Worker(path, secure_delete=secure_delete)
    store._pool.shutdown(wait=False)
    store._stop = threading.Event()
    while True:
        head = inp.read(_LEN.size)
        if len(head) < _LEN.size:
            break                              # the host went away
        (n,) = _LEN.unpack(head)
        name, args = pickle.loads(inp.read(n))
        try:
            if name not in _CALLS:
                raise SyncopateError(ErrorCode.INTERNAL, f"no store call {name!r}")
            result = (True, getattr(store, name)(*args))
            if name == "_open":
                threading.Thread(target=store._checkpoint_loop, name="sqlite-checkpoint", daemon=True).start()
        except sqlite3.Error as exc:
            result = (False, unavailable("sqlite", exc))
        except SyncopateError as err:
            result = (False, err)
        except Exception as exc:               # a bug: the caller gets an error, the store process stays up
            result = (False, SyncopateError(ErrorCode.STORE_UNAVAILABLE, f"sqlite: {type(exc).__name__}: {exc}"))
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_LEN.pack(len(data)) + data)
        out.flush()
    store._stop.set()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2:3] != ["0"])
