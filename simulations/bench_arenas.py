"""What MALLOC_ARENA_MAX does to a Ray actor's memory under calls (syncopate/process_env.py).

    .venv/bin/python -m simulations.bench_arenas [--rounds 6] [--calls 4000] [--arenas 0,2]

For each setting (0: glibc's default), one async actor (max_concurrency 10,000, as hosts and gateways
are created) started with that MALLOC_ARENA_MAX in its runtime_env receives `rounds` bursts of `calls`
Ray calls, half pings, half `tell`-like calls with a 20-item list (what a host gets from gateways and
peers). After each burst the actor reports its RSS and glibc's figures (mallinfo2, after a
gc.collect()): `arenas` the bytes glibc's arenas hold, `in use` what is allocated, `free` what is held
free inside them. The C++ core worker allocates on many threads; each thread that contends gets an
arena of its own up to 8 per core, and the free memory in them is kept, not returned.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--arenas", default="0,2", help="MALLOC_ARENA_MAX values to compare (0: glibc's default)")
    a = ap.parse_args()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")

    @ray.remote
    class Actor:
        async def ping(self) -> str:
            return "x"

        async def tell(self, cmds: list) -> list:
            return [None for _ in cmds]

        def mem(self) -> dict:
            import gc
            from syncopate.memdebug import _rss_mb, malloc_arenas, mallinfo
            gc.collect()
            return {"rss": _rss_mb(), "glibc_arenas": malloc_arenas(), **mallinfo()}

    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
    print("| MALLOC_ARENA_MAX | round | calls | s | RSS MB | glibc arenas | arena MB | in use MB | free MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in [int(x) for x in a.arenas.split(",")]:
        actor = Actor.options(max_concurrency=10_000, runtime_env={
            "env_vars": {**env, **({"MALLOC_ARENA_MAX": str(n)} if n else {})}}).remote()

        def row(r: int, calls: int, s: float) -> None:
            m = ray.get(actor.mem.remote())
            print(f"| {n or 'default'} | {r} | {calls} | {s:.1f} | {m['rss']:.1f} | {m['glibc_arenas']} | "
                  f"{m['arena']:.1f} | {m['uordblks']:.1f} | {m['fordblks']:.1f} |", flush=True)

        row(0, 0, 0.0)
        for r in range(1, a.rounds + 1):
            t = time.perf_counter()
            for i in range(0, a.calls, 100):
                ray.get([actor.ping.remote() for _ in range(50)] + [actor.tell.remote([i] * 20) for _ in range(50)])
            row(r, a.calls * r, time.perf_counter() - t)
        ray.kill(actor)
    ray.shutdown()


if __name__ == "__main__":
    main()
