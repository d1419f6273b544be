"""The failure detector's evidence about each host: how fast it answers, and when it last spoke.

A host is removed from the membership view (gateway/dispatcher.py) only on strong evidence, so a
live host starved on a loaded machine is not deposed (it would drop every entity and rejoin):

* **Adaptive ping timeout.** Each answered ping is a round-trip sample; the timeout is the one of
  TCP's retransmission timer (RFC 6298): smoothed RTT + 4 x its mean deviation, never below
  `MIN_TIMEOUT_S` and never above `MAX_TIMEOUT_S`. A late answer still counts as a sample: a
  machine that got slower raises the timeout instead of looking dead. The cap keeps node loss
  within the recovery target: SUSPECT_AFTER rounds of (ping period + cap) is under 3 s.
* **Silence, not slowness.** A ping that times out is a miss only if nothing at all was heard from
  the host since it was sent: no frame on its stream (replies, pushes), no answer to any ping,
  however late. A host that answers, even slowly, is alive.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

MIN_TIMEOUT_S = 0.75      # the ping timeout on a quiet machine (and before any sample)
MAX_TIMEOUT_S = 1.2       # however slow the answers: node loss is still found in under 3 s
ALPHA, BETA = 1 / 8, 1 / 4    # RFC 6298's gains for the smoothed RTT and its deviation


@dataclass
class HostEvidence:
    srtt: float | None = None       # smoothed ping round trip
    rttvar: float = 0.0             # its mean deviation
    last_heard: float = 0.0         # monotonic: the last frame or ping answer from the host
    misses: int = 0                 # pings in a row that timed out with the host silent


class Liveness:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._hosts: dict[int, HostEvidence] = {}

    def _of(self, host: int) -> HostEvidence:
        ev = self._hosts.get(host)
        if ev is None:
            ev = self._hosts[host] = HostEvidence()
        return ev

    def heard(self, host: int) -> None:
        """A frame arrived from `host` on its stream: it is alive."""
        ev = self._of(host)
        ev.last_heard, ev.misses = self.clock(), 0

    def answered(self, host: int, sent: float) -> None:
        """A ping sent at `sent` was answered now (in time or late): a sample, and the host spoke."""
        ev = self._of(host)
        now = self.clock()
        rtt = max(0.0, now - sent)
        if ev.srtt is None:
            ev.srtt, ev.rttvar = rtt, rtt / 2
        else:
            ev.rttvar = (1 - BETA) * ev.rttvar + BETA * abs(ev.srtt - rtt)
            ev.srtt = (1 - ALPHA) * ev.srtt + ALPHA * rtt
        ev.last_heard = now
        ev.misses = 0

    def timeout(self, host: int) -> float:
        ev = self._hosts.get(host)
        if ev is None or ev.srtt is None:
            return MIN_TIMEOUT_S
        return min(MAX_TIMEOUT_S, max(MIN_TIMEOUT_S, ev.srtt + 4 * ev.rttvar))

    def timed_out(self, host: int, sent: float) -> int:
        """A ping sent at `sent` got no answer in its timeout: the misses in a row now (unchanged,
        and not a miss, if the host spoke meanwhile)."""
        ev = self._of(host)
        if ev.last_heard > sent:
            return 0                # it spoke meanwhile (heard() cleared the count)
        ev.misses += 1
        return ev.misses

    def failed(self, host: int, count: int) -> int:
        """The ping failed outright (the actor is gone, the stream can't be opened)."""
        ev = self._of(host)
        ev.misses += count
        return ev.misses

    def forget(self, host: int) -> None:
        self._hosts.pop(host, None)
