"""The environment a gateway, host or events process starts with: its memory settings.

MALLOC_ARENA_MAX — how many glibc malloc arenas a gateway or host may use:

glibc gives each thread that contends for the heap an arena of its own, up to 8 per core; a Ray worker
runs a dozen threads (gRPC, the core worker, the store's commit thread, the memory probe), and the free
memory left inside each arena after a burst is kept there, not returned: RSS grows while the bytes in
use stay flat (docs/performance.md "Soak": the gateway's C heap in use +2 MB/h, its free arena memory
+22 MB/h). Fewer arenas share their free space. MALLOC_ARENA_MAX is read by glibc when the process
starts, so it reaches a Ray actor only through the environment it is started with: runtime_env
env_vars at actor creation (actor_options()), which works on a local Ray and on a cluster alike.

The setting: ServerSpec.malloc_arena_max, default DEFAULT_ARENA_MAX, or SYNCOPATE_MALLOC_ARENA_MAX
in the environment of the process that creates the actors (`syncopate serve`, the simulations); 0
leaves glibc's default. A MALLOC_ARENA_MAX already in that environment is passed on as it is.

SYNCOPATE_GC_EVERY_S, SYNCOPATE_GC_FULL_EVERY_S — the periods of the clocked sweeps (actors/collector.py): passed on
from the creating process's environment when set there, so it reaches the actors on a cluster too;
so are SYNCOPATE_MALLOC_TRIM (0: no malloc_trim after the sweeps) and SYNCOPATE_STALLS and
SYNCOPATE_STALLS_MS (the stall recorder, syncopate/stalls.py).
"""
from __future__ import annotations

import os

DEFAULT_ARENA_MAX = 2
ENV = "SYNCOPATE_MALLOC_ARENA_MAX"


def arena_max_default() -> int:
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_ARENA_MAX
    n = int(raw)
    if n < 0:
        raise ValueError(f"{ENV} must be 0 (glibc's default) or a count of arenas, not {raw!r}")
    return n


PASSED_ON = ("SYNCOPATE_GC_EVERY_S", "SYNCOPATE_GC_FULL_EVERY_S", "SYNCOPATE_MALLOC_TRIM",  # actors/collector.py
             "SYNCOPATE_STALLS", "SYNCOPATE_STALLS_MS")               # syncopate/stalls.py


def actor_env(arena_max: int | None) -> dict[str, str]:
    """The environment variables a gateway or host actor is created with (runtime_env env_vars)."""
    env = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    if "MALLOC_ARENA_MAX" in os.environ:
        env["MALLOC_ARENA_MAX"] = os.environ["MALLOC_ARENA_MAX"]
    elif arena_max:
        env["MALLOC_ARENA_MAX"] = str(int(arena_max))
    return env


def actor_options(arena_max: int | None) -> dict:
    """Extra Ray actor options: {"runtime_env": {"env_vars": ...}} or nothing."""
    env = actor_env(arena_max)
    return {"runtime_env": {"env_vars": env}} if env else {}
