"""The gateway's failure detector (gateway/dispatcher.py, gateway/liveness.py) against a fake host
transport and a real cluster view on the memory store: a host is removed on silence, not on
slowness, and a silent one is still removed within the recovery budget."""
from __future__ import annotations

import asyncio
import time

from actors.membership import Holder, join
from gateway.cluster_view import ClusterView
from gateway.dispatcher import Dispatcher
from gateway.liveness import MAX_TIMEOUT_S, MIN_TIMEOUT_S, Liveness
from storage.memory import MemoryStore


class Hosts:
    """Two hosts' ping path: each answers after `delay[h]` seconds, or never when `silent`."""
    n_hosts = 2

    def __init__(self) -> None:
        self.delay = {0: 0.0, 1: 0.0}
        self.silent: set[int] = set()

    async def ping(self, host: int) -> str:
        if host in self.silent:
            await asyncio.Event().wait()          # a machine that vanished: no answer, no error
        await asyncio.sleep(self.delay[host])     # a starved host: it answers, late
        return f"inc{host}"

    def send(self, host: int, requests: list) -> None:
        pass

    def connected(self, host: int) -> bool:
        return True


async def detector(hosts: Hosts):
    store = MemoryStore()
    for slot in (0, 1):
        holder = Holder("d", slot, f"inc{slot}")
        await store.open_lease(str(holder), 30)
        await join(store, "d", holder)
    view = ClusterView(store, "d")
    await view.start()
    d = Dispatcher("gw", hosts, lambda push: None, cluster=view)
    await d.start()
    return d, view


async def stop(d, view) -> None:
    await d.stop()
    await view.close()


async def removed(view, slot: int, within: float) -> float:
    """Seconds until `slot` left the view (fails after `within`)."""
    t0 = time.monotonic()
    while slot in view.view.members:
        assert time.monotonic() - t0 < within, f"slot {slot} still in the view after {within} s"
        await asyncio.sleep(0.02)                 # polling the gateway's view: no event to wait on
    return time.monotonic() - t0


async def test_a_starved_host_that_answers_late_is_not_removed():
    hosts = Hosts()
    hosts.delay[1] = 1.0                          # every ping answered in 1 s: over the 0.75 s timeout
    d, view = await detector(hosts)
    try:
        await asyncio.sleep(5.0)                  # ~15 ping rounds
        assert view.view.slots == (0, 1) and view.removals == 0
        assert d.liveness.timeout(1) == MAX_TIMEOUT_S            # it learnt the host is slow
        assert d.liveness.timeout(0) == MIN_TIMEOUT_S
    finally:
        await stop(d, view)


async def test_a_host_heard_on_its_stream_is_not_removed_when_its_pings_go_unanswered():
    hosts = Hosts()
    hosts.silent.add(1)
    d, view = await detector(hosts)
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            d.receive(1, "inc1", [])              # frames keep arriving from it: alive
            await asyncio.sleep(0.2)
        assert view.view.slots == (0, 1)
    finally:
        await stop(d, view)


async def test_a_silent_host_is_removed_within_the_recovery_budget():
    hosts = Hosts()
    hosts.delay[1] = 0.3                          # slowish first: the timeout adapts upward
    d, view = await detector(hosts)
    try:
        await asyncio.sleep(2.0)
        hosts.silent.add(1)                       # then its machine is gone
        took = await removed(view, 1, within=3.5)
        assert took < 3.5 and view.view.slots == (0,)
        assert not await view.store.renew_lease(str(Holder("d", 1, "inc1")), 30)    # revoked
    finally:
        await stop(d, view)


def test_the_timeout_follows_the_answers_within_its_bounds():
    t = [100.0]
    lv = Liveness(clock=lambda: t[0])
    assert lv.timeout(0) == MIN_TIMEOUT_S                    # no sample yet
    for rtt in (0.9, 1.0, 1.1):
        sent = t[0]
        t[0] += rtt
        lv.answered(0, sent)
    assert lv.timeout(0) == MAX_TIMEOUT_S                    # slow answers: up to the cap, no more
    for _ in range(60):
        sent = t[0]
        t[0] += 0.01
        lv.answered(0, sent)
    assert lv.timeout(0) == MIN_TIMEOUT_S                    # fast again: back to the floor
    sent = t[0]
    t[0] += 1.0
    assert lv.timed_out(0, sent) == 1                        # silent since the ping: a miss
    lv.heard(0)
    assert lv.timed_out(0, sent) == 0                        # it spoke meanwhile: not one
