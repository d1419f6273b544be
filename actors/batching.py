"""Per-destination batching for the host <-> gateway channels.

Items for one destination that are produced in the same event-loop turn travel together in one
message: the host sends one Ray call per gateway per turn however many pushes it made, and the
gateway one per host. Order within a destination is the order of `add`.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Hashable


class Batcher:
    def __init__(self, send: Callable[[Hashable, list], Any]) -> None:
        self._send = send
        self._buf: dict[Hashable, list] = {}
        self._scheduled = False
        self.batches = 0
        self.items = 0

    def add(self, dest: Hashable, items: list) -> None:
        buf = self._buf.get(dest)
        if buf is None:
            self._buf[dest] = list(items)
        else:
            buf.extend(items)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        buf, self._buf = self._buf, {}
        for dest, items in buf.items():
            self.batches += 1
            self.items += len(items)
            self._send(dest, items)
