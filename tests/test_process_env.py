"""The glibc arena cap of the server's processes (syncopate/process_env.py): the setting, and that it
reaches the actors' processes when they start (where glibc reads it)."""
from __future__ import annotations

import pytest

from syncopate import process_env
from syncopate.process_env import DEFAULT_ARENA_MAX, actor_env, actor_options, arena_max_default


def test_the_default_and_the_environment_override(monkeypatch):
    monkeypatch.delenv(process_env.ENV, raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert arena_max_default() == DEFAULT_ARENA_MAX == 2
    monkeypatch.setenv(process_env.ENV, "0")
    assert arena_max_default() == 0
    monkeypatch.setenv(process_env.ENV, "-1")
    with pytest.raises(ValueError, match="SYNCOPATE_MALLOC_ARENA_MAX"):
        arena_max_default()


def test_actor_options_carry_the_cap_and_zero_leaves_glibc_alone(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    for name in ("SYNCOPATE_GC_EVERY_S", "SYNCOPATE_GC_FULL_EVERY_S", "SYNCOPATE_MALLOC_TRIM", "SYNCOPATE_STALLS",
                 "SYNCOPATE_STALLS_MS"):
        monkeypatch.delenv(name, raising=False)
    assert actor_options(2) == {"runtime_env": {"env_vars": {"MALLOC_ARENA_MAX": "2"}}}
    assert actor_options(0) == {}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")      # the operator's own setting is passed on as it is
    assert actor_env(2) == {"MALLOC_ARENA_MAX": "4"}
    assert actor_env(0) == {"MALLOC_ARENA_MAX": "4"}
    monkeypatch.setenv("SYNCOPATE_GC_EVERY_S", "30")  # the collector's period goes along
    assert actor_env(2) == {"MALLOC_ARENA_MAX": "4", "SYNCOPATE_GC_EVERY_S": "30"}
    monkeypatch.setenv("SYNCOPATE_GC_FULL_EVERY_S", "900")   # and the full sweep's, and the stall recorder
    monkeypatch.setenv("SYNCOPATE_STALLS", "/tmp/stalls")
    monkeypatch.setenv("SYNCOPATE_STALLS_MS", "3")
    assert actor_env(0) == {"MALLOC_ARENA_MAX": "4", "SYNCOPATE_GC_EVERY_S": "30", "SYNCOPATE_GC_FULL_EVERY_S": "900",
                            "SYNCOPATE_STALLS": "/tmp/stalls", "SYNCOPATE_STALLS_MS": "3"}
    monkeypatch.setenv("SYNCOPATE_MALLOC_TRIM", "0")  # and whether the collector trims (actors/collector.py)
    assert actor_env(0)["SYNCOPATE_MALLOC_TRIM"] == "0"


def _started_env_and_arenas(self) -> tuple[str | None, int | None]:
    # runs in the actor's process: the environment it was exec'd with (what glibc read), and its arenas
    from syncopate.memdebug import malloc_arenas
    with open("/proc/self/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    v = env.get(b"MALLOC_ARENA_MAX")
    return (v.decode() if v is not None else None), malloc_arenas()


@pytest.mark.ray
def test_every_server_process_starts_with_the_cap(ray_server, monkeypatch):
    import ray
    assert ray_server.spec.malloc_arena_max == 2
    actors = [*ray_server.hosts.values(), *ray_server.gateways, ray_server.events]
    got = ray.get([a.__ray_call__.remote(_started_env_and_arenas) for a in actors], timeout=60)
    for env, arenas in got:
        assert env == "2"
        assert arenas is not None and 1 <= arenas <= 2
