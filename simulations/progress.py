"""A progress bar on stderr: `[#######.......]  12/30 s  acked 4,210  err 0  p99 3.1 ms`.

On a terminal it redraws one line (at most 5 times a second); otherwise (CI logs, pipes) it prints
a plain line every `every_s` seconds. `quiet=True` silences it.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: float, label: str = "", *, unit: str = "s", width: int = 30,
                 stream: TextIO | None = None, quiet: bool = False, every_s: float = 5.0) -> None:
        self.total = max(total, 1e-9)
        self.label = label
        self.unit = unit
        self.width = width
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if not self.tty else 0.2
        self._last = 0.0
        self._shown = False
        self.done = 0.0

    def line(self, done: float, info: str = "") -> str:
        frac = min(1.0, max(0.0, done / self.total))
        n = int(frac * self.width)
        bar = "#" * n + "." * (self.width - n)
        total = f"{self.total:g}" if self.total == int(self.total) else f"{self.total:.1f}"
        return f"{self.label} [{bar}] {done:5.1f}/{total} {self.unit}  {info}".rstrip()

    def update(self, done: float, info: str = "", *, force: bool = False) -> None:
        self.done = done
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        text = self.line(done, info)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = True

    def note(self, text: str) -> None:
        """A message on its own line (phases: connecting, verifying...)."""
        if self.quiet:
            return
        if self.tty and self._shown:
            self.stream.write("\n")
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()
        self._shown = False

    def close(self, info: str = "") -> None:
        if self.quiet:
            return
        self.update(self.done, info, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
