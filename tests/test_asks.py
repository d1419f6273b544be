"""The host's asks (actors/asks.py): a play of a playlist context reads the playlist entity, on the
host that owns it, as the commanding user, before the device group's op runs with the answer; a
group's first playback command reads its user's market from the account entity the same way.

An in-process cluster of two hosts (actors/local.py: the same routing as effects between hosts), the
real playlist, account and device group entities, the memory store."""
from __future__ import annotations

import pytest

from actors.account import ACCOUNT, AccountEntity
from actors.devicegroup import DeviceGroupEntity
from actors.entity import Command, Env, Principal
from actors.local import LocalCluster
from actors.placement import owner
from actors.playlist import PlaylistEntity
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP, PLAYLIST
from storage.memory import MemoryStore
from tests.support.catalog import catalog_with

TRACKS = [f"{i:022d}" for i in range(6)]
URIS = [f"spotify:track:{t}" for t in TRACKS]
HOSTS = 2


def _on_other_host(user: str, prefix: str) -> str:
    """A playlist id owned by the other host than `user`'s device group: the ask crosses hosts."""
    mine = owner(f"{DEVICE_GROUP}:{user}", HOSTS)
    for i in range(1000):
        pid = f"{prefix}{i:018d}"[:22].ljust(22, "0")
        if owner(f"{PLAYLIST}:{pid}", HOSTS) != mine:
            return pid
    raise AssertionError("no playlist id on the other host")


@pytest.fixture
async def cluster():
    c = LocalCluster(MemoryStore(), {PLAYLIST: PlaylistEntity, DEVICE_GROUP: DeviceGroupEntity, ACCOUNT: AccountEntity},
                     Env(catalog=catalog_with(TRACKS)), hosts=HOSTS)
    await c.start()
    yield c
    await c.close(passivate=False)


async def call(c: LocalCluster, kind: str, eid: str, op: str, principal: Principal, op_id=None, **args):
    cmd = Command(kind, eid, op, args, principal, op_id=op_id)
    return await c.host_for(cmd.key).call(cmd)


async def playing(c, user: str, pid: str, *, public: bool = True, by: str | None = None) -> Principal:
    """`by` (default `user`) owns playlist `pid` with URIS[:4]; `user` has one registered device."""
    me, author = Principal(user), Principal(by or user)
    await call(c, PLAYLIST, pid, "create", author, name="Mix", public=public)
    await call(c, PLAYLIST, pid, "add", author, uris=URIS[:4])
    await call(c, DEVICE_GROUP, user, "register", me, device_id="d0", name="Laptop")
    return me


async def test_play_of_a_playlist_on_another_host_reads_it_there(cluster):
    pid = _on_other_host("ann", "p")
    me = await playing(cluster, "ann", pid)
    group_host = cluster.host_for(f"{DEVICE_GROUP}:ann")
    assert group_host is not cluster.host_for(f"{PLAYLIST}:{pid}")
    await call(cluster, DEVICE_GROUP, "ann", "play", me, device_id="d0",
               context_uri=f"spotify:playlist:{pid}", offset={"position": 2})
    state, _ = await call(cluster, DEVICE_GROUP, "ann", "state", me)
    assert state["uri"] == URIS[2] and state["context_uri"] == f"spotify:playlist:{pid}"
    entries, _ = await call(cluster, PLAYLIST, pid, "entries", me)
    assert cluster.host_for(f"{DEVICE_GROUP}:ann").slots[f"{DEVICE_GROUP}:ann"].entity.p["tracks"] == \
        entries["entries"]
    # two reads: the group's market (it has none yet: the user has no account, so US) and the entries
    assert group_host.metrics.asks_sent == 2 and group_host.metrics.asks_refused == 0
    assert state["market"] == "US"


async def test_a_private_playlist_of_another_user_is_not_found_and_changes_nothing(cluster):
    pid = _on_other_host("bob", "q")
    me = await playing(cluster, "bob", pid, public=False, by="carol")
    before, v0 = await call(cluster, DEVICE_GROUP, "bob", "state", me)
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, "bob", "play", me, device_id="d0", context_uri=f"spotify:playlist:{pid}")
    assert ei.value.code == ErrorCode.NOT_FOUND and ei.value.message == f"playlist {pid} not found"
    after, v1 = await call(cluster, DEVICE_GROUP, "bob", "state", me)
    assert (after, v1) == (before, v0)
    assert cluster.host_for(f"{DEVICE_GROUP}:bob").metrics.asks_refused == 1
    # the owner's own play of it is allowed: the ask runs as the commanding user
    carol = await playing(cluster, "carol", _on_other_host("carol", "r"))
    await call(cluster, DEVICE_GROUP, "carol", "play", carol, device_id="d0", context_uri=f"spotify:playlist:{pid}")
    assert (await call(cluster, DEVICE_GROUP, "carol", "state", carol))[0]["uri"] == URIS[0]


async def test_a_playlist_that_does_not_exist_is_not_found(cluster):
    me = Principal("dan")
    await call(cluster, DEVICE_GROUP, "dan", "register", me, device_id="d0", name="Laptop")
    pid = _on_other_host("dan", "s")
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, "dan", "play", me, device_id="d0", context_uri=f"spotify:playlist:{pid}")
    assert ei.value.code == ErrorCode.NOT_FOUND and ei.value.message == f"playlist {pid} not found"


async def test_a_malformed_playlist_uri_is_refused_before_any_ask(cluster):
    me = Principal("eve")
    await call(cluster, DEVICE_GROUP, "eve", "register", me, device_id="d0", name="Laptop")
    with pytest.raises(SyncopateError) as ei:
        await call(cluster, DEVICE_GROUP, "eve", "play", me, device_id="d0", context_uri="spotify:playlist:no")
    assert ei.value.code == ErrorCode.INVALID_URI
    assert cluster.host_for(f"{DEVICE_GROUP}:eve").metrics.asks_sent == 0


async def test_a_retried_play_is_answered_from_the_log_without_asking_again(cluster):
    pid = _on_other_host("fay", "t")
    me = await playing(cluster, "fay", pid)
    host = cluster.host_for(f"{DEVICE_GROUP}:fay")
    first = await call(cluster, DEVICE_GROUP, "fay", "play", me, op_id="play-1", device_id="d0",
                       context_uri=f"spotify:playlist:{pid}")
    again = await call(cluster, DEVICE_GROUP, "fay", "play", me, op_id="play-1", device_id="d0",
                       context_uri=f"spotify:playlist:{pid}")
    assert again == first and host.metrics.asks_sent == 2       # the market and the entries, once


async def test_a_client_cannot_supply_the_answer(cluster):
    """`context_entries` in the args (what the gateway used to add) mean nothing now: the entries
    are the playlist's, asked by the host."""
    pid = _on_other_host("gus", "u")
    me = await playing(cluster, "gus", pid)
    await call(cluster, DEVICE_GROUP, "gus", "play", me, device_id="d0", context_uri=f"spotify:playlist:{pid}",
               context_entries=[["forged", URIS[5]]])
    assert (await call(cluster, DEVICE_GROUP, "gus", "state", me))[0]["uri"] == URIS[0]
