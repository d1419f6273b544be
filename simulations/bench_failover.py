"""Failover benchmark, in process: how long writes to the entities of a killed host stall.

    .venv/bin/python -m simulations.bench_failover [--hosts 3] [--entities 24] [--runs 3] [--lease 2.0]

One LocalServer with a membership view (leases, the gateway's failure detector), PostgreSQL
store under a table prefix of its own (dropped afterwards). Each entity (a counter) has one
writer that sends one op at a time through the gateway's dispatcher, each retried with its op id
until acknowledged. After a second of load a host is killed dead (no answers, no lease renewal,
its streams gone: a node loss); the run then goes on for 2 x lease seconds. Printed per run: the
longest any entity went without an acknowledgement from the kill on (the recovery time), how many
acknowledged ops the store holds against how many were acknowledged (loss), and the client-seen
failures. The killed slot is revived between runs (Ray's restart), so each run kills a full view.
The multi-node figure (raylets, kill -9) is tests/test_cluster_failover.py's (docs/performance.md).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid

from actors.entity import Command, Principal
from protocols.errors import SyncopateError
from storage.postgres import PostgresStore
from syncopate.server import LocalServer, ServerSpec

PG_DSN = os.environ.get("SYNCOPATE_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
USER = Principal("bench")


async def writer(dispatcher, eid: str, tag: str, stop: asyncio.Event, acks: list, failures: list) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        while True:
            try:
                await dispatcher.call(Command("counter", eid, "add", {"n": 1}, USER, op_id=f"{eid}-{tag}-{n}"))
                break
            except SyncopateError as err:
                failures.append(err.code.value)
                await asyncio.sleep(0.05)
        acks.append(time.monotonic())
        await asyncio.sleep(0.01)


async def one_run(srv, victim: int, entities: int, lease_s: float) -> dict:
    tag = uuid.uuid4().hex[:6]
    stop = asyncio.Event()
    acks = {f"c{i}": [] for i in range(entities)}
    failures: list = []
    before = {}
    for eid in acks:
        before[eid] = (await srv.gateway.dispatcher.call(Command("counter", eid, "get", {}, USER)))[0]["total"]
    tasks = [asyncio.create_task(writer(srv.gateway.dispatcher, eid, tag, stop, acks[eid], failures)) for eid in acks]
    await asyncio.sleep(1.0)
    t_kill = time.monotonic()
    srv.cluster.kill_host(victim)
    await asyncio.sleep(2 * lease_s)
    stop.set()
    await asyncio.gather(*tasks)
    stall = max(max(b - a for a, b in zip([t_kill] + after, after))
                for after in ([t for t in a if t >= t_kill] for a in acks.values()))
    stored = 0
    for eid in acks:
        stored += (await srv.gateway.dispatcher.call(Command("counter", eid, "get", {}, USER)))[0]["total"] - before[eid]
    await srv.cluster.revive(victim)
    return {"recovery_s": stall, "acked": sum(len(a) for a in acks.values()), "stored": stored,
            "failures": len(failures)}


async def main(args) -> None:
    prefix = f"b{uuid.uuid4().hex[:12]}_"
    store = PostgresStore(PG_DSN, prefix=prefix)
    with tempfile.TemporaryDirectory() as d:
        spec = ServerSpec(data_dir=d, port=0, hosts=args.hosts, kinds="tests.toy:kinds", log_level="WARNING")
        lease = {"lease_s": args.lease, "renew_s": args.lease / 5}
        srv = await LocalServer(spec, store=store, membership=f"m{prefix}", lease=lease).start()
        try:
            results = []
            for run in range(args.runs):
                r = await one_run(srv, run % args.hosts, args.entities, args.lease)
                results.append(r)
                print(f"run {run + 1}: host {run % args.hosts} killed; writes to all {args.entities} entities again "
                      f"after {r['recovery_s']:.2f} s; acknowledged {r['acked']}, stored {r['stored']}, "
                      f"client-seen failures {r['failures']}", flush=True)
                await asyncio.sleep(2 * args.lease)       # the revived host took its entities back
            rec = [r["recovery_s"] for r in results]
            print(f"recovery: median {statistics.median(rec):.2f} s, max {max(rec):.2f} s over {len(rec)} runs "
                  f"(lease {args.lease:.1f} s); lost {sum(r['acked'] - r['stored'] for r in results)}")
        finally:
            await srv.stop()
            admin = PostgresStore(PG_DSN, prefix=prefix, max_size=2)
            await admin.start()
            await admin.drop()
            await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--entities", type=int, default=24)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--lease", type=float, default=2.0, help="host lease seconds (renewed every lease/5)")
    asyncio.run(main(p.parse_args()))
