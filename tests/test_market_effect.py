"""The user's market travels from the account entity to the device group (actors/devicegroup_market.py):
`market_changed` through the account's durable outbox when the country or the explicit content
filter is set or changes, and the group's own read of them (an ask) before its first playback
command when it holds none. No gateway:
an in-process cluster of two hosts (actors/local.py), the account on the other host than the group,
the real entities, the memory store."""
from __future__ import annotations

import asyncio
import time

import pytest

from actors.account import ACCOUNT, AccountEntity
from actors.devicegroup import DeviceGroupEntity
from actors.devicegroup_records import UserMarket
from actors.entity import SYSTEM, Command, Env, Principal
from actors.local import LocalCluster
from actors.placement import owner
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP
from storage.memory import MemoryStore
from tests.support.catalog import CatalogBuilder, tid, turi

HOSTS = 2
ARTIST, ALBUM = "r" + "0" * 21, "a" + "0" * 21


def catalog():
    """Tracks 0..3; track 1 is licensed in SE and NO only; track 3 is explicit."""
    b = CatalogBuilder()
    b.artist(ARTIST, "Artist")
    b.album(ALBUM, [ARTIST], "Album")
    for i in range(4):
        b.track(tid(i), ALBUM, name=f"Song {i}", duration_ms=200_000, markets={"SE", "NO"} if i == 1 else None,
                explicit=i == 3)
    return b.build()


def user_apart(prefix: str) -> str:
    """A user whose account and device group live on different hosts: the notice crosses hosts."""
    for i in range(1000):
        uid = f"{prefix}{i}"
        if owner(f"{ACCOUNT}:{uid}", HOSTS) != owner(f"{DEVICE_GROUP}:{uid}", HOSTS):
            return uid
    raise AssertionError("no user with the account and the group apart")


@pytest.fixture
async def cluster():
    c = LocalCluster(MemoryStore(), {ACCOUNT: AccountEntity, DEVICE_GROUP: DeviceGroupEntity},
                     Env(catalog=catalog()), hosts=HOSTS)
    await c.start()
    yield c
    await c.close(passivate=False)


async def call(c: LocalCluster, kind: str, eid: str, op: str, principal: Principal = SYSTEM, **args):
    cmd = Command(kind, eid, op, args, principal)
    return (await c.host_for(cmd.key).call(cmd))[0]


def group(c: LocalCluster, uid: str) -> DeviceGroupEntity | None:
    slot = c.host_for(f"{DEVICE_GROUP}:{uid}").slots.get(f"{DEVICE_GROUP}:{uid}")
    return slot.entity if slot is not None else None


async def market_reaches(c: LocalCluster, uid: str, want: UserMarket, timeout: float = 10.0) -> None:
    """Until the group holds `want` (the account's outbox delivers it after the account's commit)."""
    deadline = time.monotonic() + timeout
    while (g := group(c, uid)) is None or g.market != want:
        assert time.monotonic() < deadline, f"{want} did not reach the group: {g.market if g else None}"
        await asyncio.sleep(0.005)


def asks(c: LocalCluster, uid: str) -> int:
    return c.host_for(f"{DEVICE_GROUP}:{uid}").metrics.asks_sent


async def test_a_change_of_country_reaches_the_group_and_the_next_play(cluster):
    uid = user_apart("ann")
    me = Principal(uid)
    await call(cluster, ACCOUNT, uid, "create", country="SE")
    await market_reaches(cluster, uid, UserMarket("SE", 1))
    await call(cluster, DEVICE_GROUP, uid, "register", me, device_id="d0", name="Laptop")
    await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(1), turi(2)])
    state = await call(cluster, DEVICE_GROUP, uid, "state", me)
    assert state["uri"] == turi(1) and state["market"] == "SE"
    assert asks(cluster, uid) == 0                     # told by the account: nothing to read
    await call(cluster, ACCOUNT, uid, "update", display_name="Ann")          # not the country: no notice
    await call(cluster, ACCOUNT, uid, "update", country="US")
    await market_reaches(cluster, uid, UserMarket("US", 3))
    state = await call(cluster, DEVICE_GROUP, uid, "state", me)
    assert state["uri"] == turi(2) and state["market"] == "US"   # moved off it, as a takedown
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(1)], market="SE")
    assert ei.value.code == ErrorCode.TRACK_UNAVAILABLE and ei.value.details["market"] == "US"
    await call(cluster, ACCOUNT, uid, "update", country="NO")
    await market_reaches(cluster, uid, UserMarket("NO", 4))
    await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(1)])
    assert (await call(cluster, DEVICE_GROUP, uid, "state", me))["uri"] == turi(1)
    assert asks(cluster, uid) == 0


async def test_a_group_without_the_accounts_market_reads_it_before_its_first_playback_command(cluster):
    uid = user_apart("bob")
    me = Principal(uid)
    await call(cluster, DEVICE_GROUP, uid, "register", me, device_id="d0", name="Laptop")
    assert group(cluster, uid).market == UserMarket()
    # no account: the account's answer for a user without one (US, as /v1/me answers), read once
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(1)])
    assert ei.value.code == ErrorCode.TRACK_UNAVAILABLE and ei.value.details["market"] == "US"
    assert group(cluster, uid).market == UserMarket()    # a refusal stores nothing, the read neither
    await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(0), turi(1), turi(2)])
    assert group(cluster, uid).market == UserMarket("US", 0) and asks(cluster, uid) == 2
    await call(cluster, DEVICE_GROUP, uid, "next", me)
    assert (await call(cluster, DEVICE_GROUP, uid, "state", me))["uri"] == turi(2)   # 1 skipped in US
    assert asks(cluster, uid) == 2
    # the account created later tells the group (version 1 is newer than the answer's 0)
    await call(cluster, ACCOUNT, uid, "create", country="SE")
    await market_reaches(cluster, uid, UserMarket("SE", 1))
    await call(cluster, DEVICE_GROUP, uid, "previous", me)
    assert (await call(cluster, DEVICE_GROUP, uid, "state", me))["uri"] == turi(1)


async def test_another_user_gets_no_read_of_the_market_and_is_refused(cluster):
    uid = user_apart("cy")
    await call(cluster, ACCOUNT, uid, "create", country="SE")
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, ACCOUNT, uid, "market", Principal("mallory"))
    assert ei.value.code == ErrorCode.FORBIDDEN
    assert await call(cluster, ACCOUNT, uid, "market", Principal(uid)) == {"country": "SE", "explicit_filter": False,
                                                                             "as_of": 1}
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, uid, "play", Principal("mallory"), uris=[turi(0)])
    assert ei.value.code == ErrorCode.FORBIDDEN and asks(cluster, uid) == 0


FILTER_ON = {"filter_enabled": True, "filter_locked": False}


async def test_the_explicit_filter_travels_with_the_market_and_moves_a_playing_group_off(cluster):
    uid = user_apart("dee")
    me = Principal(uid)
    await call(cluster, ACCOUNT, uid, "create", country="SE")
    await market_reaches(cluster, uid, UserMarket("SE", 1, False))
    await call(cluster, DEVICE_GROUP, uid, "register", me, device_id="d0", name="Laptop")
    await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(3), turi(0)])
    assert (await call(cluster, DEVICE_GROUP, uid, "state", me))["uri"] == turi(3)
    await call(cluster, ACCOUNT, uid, "update", explicit_content=FILTER_ON)
    await market_reaches(cluster, uid, UserMarket("SE", 2, True))
    state = await call(cluster, DEVICE_GROUP, uid, "state", me)
    assert state["uri"] == turi(0) and state["explicit_filter"] is True      # moved off the explicit track
    # a client's explicit_filter is not read; the refusal names the filter
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(3)], explicit_filter=False)
    assert ei.value.code == ErrorCode.TRACK_UNAVAILABLE and ei.value.details["restriction"] == "explicit"
    # filter_locked alone is no change of what plays: no notice (the group keeps version 2)
    await call(cluster, ACCOUNT, uid, "update", explicit_content={"filter_enabled": True, "filter_locked": True})
    await call(cluster, ACCOUNT, uid, "update", country="NO")
    await market_reaches(cluster, uid, UserMarket("NO", 4, True))       # the filter rides with the country
    # an older notice (re-sent, or overtaken) changes neither fact
    late = await call(cluster, DEVICE_GROUP, uid, "market_changed", country="SE", explicit_filter=False, as_of=2)
    assert late == {"changed": False} and group(cluster, uid).market == UserMarket("NO", 4, True)
    await call(cluster, ACCOUNT, uid, "update", explicit_content={"filter_enabled": False, "filter_locked": False})
    await market_reaches(cluster, uid, UserMarket("NO", 5, False))
    await call(cluster, DEVICE_GROUP, uid, "play", me, device_id="d0", uris=[turi(3)])
    assert (await call(cluster, DEVICE_GROUP, uid, "state", me))["uri"] == turi(3)
    assert asks(cluster, uid) == 0


def test_a_group_without_the_facts_asks_and_the_answer_carries_the_filter():
    """The ask's answer (the account's `market` op) is both facts; a malformed one changes nothing."""
    from tests.support.entities import EntityDriver
    uid = "fay"
    d = EntityDriver(DeviceGroupEntity, uid, Env(catalog=catalog()), now_ms=1_700_000_000_000)
    d.command("register", {"device_id": "d0", "name": "Laptop"}, principal=Principal(uid), origin=("gw1", "c0"))
    d.serve("account", uid, "market", {"country": "SE", "explicit_filter": "yes", "as_of": 3})
    with pytest.raises(SyncopateError) as ei:
        d.command("play", {"device_id": "d0", "uris": [turi(0)]}, principal=Principal(uid))
    assert ei.value.code == ErrorCode.INVALID_FIELD and d.e.market == UserMarket()
    d.serve("account", uid, "market", {"country": "SE", "explicit_filter": True, "as_of": 3})
    with pytest.raises(SyncopateError) as ei:
        d.command("play", {"device_id": "d0", "uris": [turi(3)]}, principal=Principal(uid))
    assert ei.value.details["restriction"] == "explicit" and d.e.market == UserMarket()   # a refusal stores nothing
    d.command("play", {"device_id": "d0", "uris": [turi(3), turi(0)]}, principal=Principal(uid))
    assert d.e.market == UserMarket("SE", 3, True) and d.e.p["uri"] == turi(0) and len(d.asked) == 3
