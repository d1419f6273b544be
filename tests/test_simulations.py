"""The simulation harness (simulations/, docs/simulation.md).

Framework pieces are tested alone (progress, report, recovery, ledger, replica, proxy, client);
each live scenario runs small against the session's shared server and its report is checked for
its fields and for convergence; each fault option runs once on a small server of its own (faults
disturb a server: never the shared one); the scale model runs tiny.
"""
from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path

import pytest

from simulations.faults import FaultSpec, TcpProxy, parse_cut, proxied_dsn
from simulations.progress import Progress
from simulations.report import (
    Recorder,
    build_report,
    markdown,
    pct,
    recovery,
    summarize,
    write_report,
)
from simulations.scenarios.base import Ledger
from simulations.scenarios.model import PlaylistReplica

LIVE = pytest.mark.ray      # drives the session's Ray cluster (and Ray's blocking client calls)


# ----------------------------------------------------------------------------------------------------
# framework pieces
# ----------------------------------------------------------------------------------------------------
def test_progress_bar_draws_lines_on_a_pipe_and_stays_quiet_when_asked():
    out = io.StringIO()
    p = Progress(10, "collab", stream=out, every_s=0.0)
    p.update(2.5, "acked 10")
    p.update(10, "acked 40")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("collab [#######.......................]   2.5/10 s  acked 10")
    assert "[" + "#" * 30 + "]" in lines[1]
    quiet = io.StringIO()
    q = Progress(10, "x", stream=quiet, quiet=True)
    q.update(5, "y", force=True)
    q.note("z")
    assert quiet.getvalue() == ""


def test_percentiles_and_summary():
    xs = sorted(float(i) for i in range(1, 101))
    assert pct(xs, 0.5) == 50 and pct(xs, 0.99) == 99 and pct(xs, 1.0) == 100
    assert pct([], 0.5) is None
    s = summarize([5.0, 1.0, 3.0], duration_s=2.0)
    assert s["count"] == 3 and s["p50"] == 3.0 and s["max"] == 5.0 and s["per_s"] == 1.5


def test_latency_samples_are_packed_pairs():
    """The recorder's samples: 16 bytes each (a 30-minute soak records millions), read back as pairs."""
    import sys
    from simulations.report import Samples
    s = Samples()
    for i in range(10_000):
        s.append((i / 10, float(i % 7)))
    assert len(s) == 10_000 and s[-1] == (999.9, float(9_999 % 7)) and s[0] == (0.0, 0.0)
    assert list(s)[:3] == [(0.0, 0.0), (0.1, 1.0), (0.2, 2.0)]
    assert sys.getsizeof(s._a) < 10_000 * 16 * 1.2
    with pytest.raises(IndexError):
        s[10_000]
    assert not Samples() and list(Samples([(1.0, 2.0)])) == [(1.0, 2.0)]


def test_recovery_is_measured_from_the_fault_to_the_last_error_and_needs_a_later_success():
    rec = Recorder()
    rec.t0 = 0.0
    # steady 5 ms acks every 0.1 s, a fault at t=2: errors until 3.0, then acks again
    rec.lat["ack:x"] = [(t / 10, 5.0) for t in range(20)] + [(t / 10, 5.0) for t in range(31, 50)]
    rec.errors = [(2.0 + k / 10, "x", "HOST_UNAVAILABLE", True) for k in range(11)]
    r = recovery(rec, 2.0)
    assert r["recovered"] and r["recovery_s"] == pytest.approx(1.0) and r["errors_after_fault"] == 11
    assert r["codes"] == {"HOST_UNAVAILABLE": 11}
    # a stall without errors: an ack sent before the fault, answered 1.5 s after it
    rec2 = Recorder()
    rec2.t0 = 0.0
    rec2.lat["ack:x"] = [(1.0, 5.0), (3.5, 1600.0), (3.6, 5.0)]
    r2 = recovery(rec2, 2.0)
    assert r2["recovered"] and r2["recovery_s"] == pytest.approx(1.5)
    # nothing succeeded after the fault: not recovered
    rec3 = Recorder()
    rec3.t0 = 0.0
    rec3.lat["ack:x"] = [(1.0, 5.0)]
    rec3.errors = [(2.5, "x", "TIMEOUT", False)]
    assert recovery(rec3, 2.0)["recovered"] is False


def test_ledger_counts_acknowledged_changes_missing_before_a_fault():
    led = Ledger()
    for i in range(10):
        led.ack(("k", i), float(i))
    led.missing.update({("k", 2), ("k", 8)})
    assert led.acked_before(5.0) == 5
    assert led.missing_before(5.0) == 1 and led.missing_before(100.0) == 2


def test_replica_applies_deltas_and_detects_a_lost_push():
    r = PlaylistReplica("p1")
    r.load({"mode": "full", "version": 3, "snapshot_id": "s3",
            "items": [{"entry_id": "a", "uri": "u:a"}, {"entry_id": "b", "uri": "u:b"}]}, 3)
    r.on_push({"entity": "playlist:p1", "version": 4, "payload": {"snapshot_id": "s4", "delta": [
        {"op": "insert", "index": 1, "items": [{"entry_id": "c", "uri": "u:c"}]}]}})
    assert r.ids == ["a", "c", "b"] and r.version == 4 and r.apply_errors == 0
    # a move: delete + insert of the same entry
    r.on_push({"entity": "playlist:p1", "version": 5, "payload": {"delta": [
        {"op": "delete", "index": 0, "entry_ids": ["a"]}, {"op": "insert", "index": 2, "items": [{"entry_id": "a"}]}]}})
    assert r.ids == ["c", "b", "a"]
    r.on_push({"entity": "playlist:p1", "version": 5, "payload": {"delta": []}})     # a duplicate: ignored
    assert r.stale_pushes == 1
    # version 6 was lost: 7 deletes an entry at a position that holds another one
    r.on_push({"entity": "playlist:p1", "version": 7, "payload": {"delta": [
        {"op": "delete", "index": 0, "entry_ids": ["x"]}]}})
    assert r.apply_errors == 1
    r.load({"mode": "deltas", "version": 8, "deltas": [{"version": 8, "delta": [
        {"op": "insert", "index": 0, "items": [{"entry_id": "d", "uri": "u:d"}]}]}]}, 8)
    assert r.ids[0] == "d" and r.version == 8


def test_report_is_written_as_json_markdown_and_plots(tmp_path):
    rec = Recorder()
    for i in range(50):
        rec.latency("ack:library.save", 2.0 + i % 7, t_done=rec.t0 + i * 0.05)
    rec.error("library.save", "HOST_UNAVAILABLE", retried=True, t=rec.t0 + 1.0)
    rec.error("library.save", "TIMEOUT", t=rec.t0 + 1.1)
    rec.expect("push:x", 4)
    rec.delivered("push:x", 3)
    rec.mark("fault", fault="kill_host")
    res = {"processes": {"host-0": {"pids": [1], "rss_mb_mean": 100.0, "rss_mb_max": 110.0, "cpu_pct_mean": 20.0,
                                    "cpu_pct_max": 50.0, "server": True}},
           "samples": [{"t": 0.0, "label": "host-0", "pids": [1], "rss_mb": 100.0, "cpu_pct": 10.0},
                       {"t": 1.0, "label": "host-0", "pids": [1], "rss_mb": 110.0, "cpu_pct": 30.0}],
           "server_cpu_pct_mean": 20.0, "server_rss_mb_max": 110.0}
    report = build_report(rec, scenario="unit", params={"a": 1}, target={"url": "http://x", "store": "memory"},
                          convergence={"ok": True, "replicas_checked": 2}, resources=res, load_seconds=2.5,
                          faults=[{"kind": "kill_host", "at_s": 1.0, "acked_missing_after_recovery": 0,
                                   "acked_before": 20, "recovery": {"recovery_s": 0.5}}])
    assert report["ok"] is True
    assert report["latency_ms"]["ack:library.save"]["count"] == 50
    assert report["errors"]["by_code"] == {"TIMEOUT": 1} and report["errors"]["retried_by_code"] == {"HOST_UNAVAILABLE": 1}
    assert report["delivery"]["push:x"]["ratio"] == 0.75
    assert report["throughput"]["acked_per_s"] == 20.0
    write_report(report, tmp_path)
    for f in ("report.json", "report.md", "latency.png", "throughput.png", "resources.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    md = (tmp_path / "report.md").read_text()
    assert "| ack:library.save | 50 |" in md and "## Faults" in md and "kill_host" in md
    assert json.loads((tmp_path / "report.json").read_text())["plots"] == ["latency.png", "throughput.png",
                                                                         "resources.png"]
    # a fault that lost an acknowledged change fails the run, whatever convergence says
    bad = dict(report, faults=[{"kind": "kill_host", "acked_missing_after_recovery": 1}])
    assert "FAILED" in markdown({**bad, "ok": False})
    assert build_report(rec, scenario="u", params={}, target={}, convergence={"ok": True},
                        faults=[{"kind": "k", "acked_missing_after_recovery": 1}])["ok"] is False


def test_fault_options_parse():
    assert parse_cut("5:3") == (5.0, 3.0)
    for bad in ("5", "-1:2", "3:0"):
        with pytest.raises(ValueError):
            parse_cut(bad)
    spec = FaultSpec(kill_host_at=2, cut_postgres=(4, 3))
    assert spec.any() and spec.needs_postgres and not spec.needs_redis and spec.last_event_s() == 7
    assert FaultSpec(restart_redis_at=1).needs_redis
    assert proxied_dsn("postgresql://postgres@127.0.0.1:5432/test", 6000) == "postgresql://postgres@127.0.0.1:6000/test"


def _recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_tcp_proxy_forwards_then_cuts_and_refuses_then_restores():
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def echo():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(1024), b"")],
                             daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    proxy = TcpProxy("127.0.0.1", port)
    pport = proxy.start()
    try:
        a = socket.create_connection(("127.0.0.1", pport), 2)
        a.settimeout(2)
        a.sendall(b"ping")
        assert _recv_exact(a, 4) == b"ping"
        proxy.cut()
        assert a.recv(10) == b""                       # the open connection is cut
        b = socket.create_connection(("127.0.0.1", pport), 2)
        b.settimeout(2)
        try:
            got = b.recv(10)                          # new ones are refused (closed at once)
        except ConnectionResetError:
            got = b""
        assert got == b""
        proxy.restore()
        deadline = time.monotonic() + 5
        while True:                                   # restore() is handed to the proxy's thread
            c = socket.create_connection(("127.0.0.1", pport), 2)
            c.settimeout(2)
            c.sendall(b"back")
            try:
                if _recv_exact(c, 4) == b"back":
                    break
            except ConnectionResetError:
                pass
            assert time.monotonic() < deadline
        assert proxy.connections_cut >= 1
    finally:
        proxy.stop()
        stop.set()
        srv.close()


# ----------------------------------------------------------------------------------------------------
# the client against the real server
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target(ray_server):
    from simulations.harness import Target
    return Target.from_server(ray_server)


@LIVE
async def test_client_correlates_answers_pushes_and_retries_with_one_op_id(target, unique):
    from simulations.client import ClientError, SimClient
    from simulations.scenarios.base import Ledger  # noqa: F401  (imported for symmetry with scenarios)
    uris = [t.uri for t in list(target.catalog.tracks)[:30]]
    a = SimClient(target.url_fn, target.token(unique), name="a")
    b = SimClient(target.url_fn, target.token(unique), name="b")
    try:
        hello = await a.connect()
        assert hello["user_id"] == unique
        await b.connect()
        got = asyncio.Queue()
        b.on("library.changed", lambda msg, t: got.put_nowait(msg))
        # many requests in flight at once, each answered to its own caller
        results = await asyncio.gather(*(a.call("library.save", {"uris": [u]}) for u in uris[:10]))
        versions = sorted(r.version for r in results)
        assert len(set(versions)) == 10
        pushed = [await asyncio.wait_for(got.get(), 5) for _ in range(10)]
        assert sorted(m["version"] for m in pushed) == versions
        # the same op id twice: applied once, the second answered from the log
        op = a.new_op_id()
        r1 = await a.call("library.remove", {"uris": [uris[0]]}, op_id=op)
        r2 = await a.call("library.remove", {"uris": [uris[0]]}, op_id=op)
        assert r1.version == r2.version
        # a refusal is a ClientError with the server's code
        with pytest.raises(ClientError) as e:
            await a.call("library.save", {"uris": ["spotify:track:nope"]})
        assert e.value.code == "INVALID_URI" and not e.value.retryable
        # a dropped connection reconnects by itself and runs its hook
        back = asyncio.Event()

        async def hook(c):
            back.set()
        a.on_reconnect(hook)
        await a.drop()
        await asyncio.wait_for(back.wait(), 10)
        assert a.is_connected and a.disconnects == 1 and a.connects == 2
        res = await a.call("library.contains", {"uris": uris[:2]})
        assert res.payload == [False, True]
    finally:
        await a.close()
        await b.close()


# ----------------------------------------------------------------------------------------------------
# scenarios against the shared server
# ----------------------------------------------------------------------------------------------------
COMMON_FIELDS = ("schema", "scenario", "duration_s", "params", "target", "throughput", "latency_ms", "timeline",
                 "delivery", "convergence", "errors", "faults", "resources", "ok")


def check_report(report: dict, out: Path) -> None:
    for k in COMMON_FIELDS:
        assert k in report, k
    assert report["convergence"]["ok"], report["convergence"]
    assert report["ok"], (report["convergence"], report["faults"])
    assert report["errors"]["total"] == 0, report["errors"]
    procs = report["resources"]["processes"]
    assert any(k.startswith("host-") for k in procs) and any(k.startswith("gateway-") for k in procs), procs
    assert report["resources"]["server_cpu_pct_mean"] is not None
    assert any(n.startswith("ack:") and v["count"] > 0 for n, v in report["latency_ms"].items())
    for f in ("report.json", "report.md"):
        assert (out / f).exists()
    assert json.loads((out / "report.json").read_text())["scenario"] == report["scenario"]


@LIVE
@pytest.mark.node
async def test_collab_converges_with_app_and_yjs_editors(target, tmp_path):
    from simulations.harness import run_scenario
    report = await run_scenario("collab", target, {"playlists": 2, "editors": 4, "rate": 2.0, "yjs_share": 0.25,
                                                   "offline_share": 0.25, "offline_s": 1.0},
                                seconds=4, out_dir=str(tmp_path), quiet=True)
    check_report(report, tmp_path)
    c = report["convergence"]
    assert c["replicas_checked"] == 8 and c["diverged"] == 0 and c["delta_apply_errors"] == 0
    assert c["acked_changes"] > 0 and c["acked_missing"] == 0 and c["items_wrong"] == 0
    assert c["yjs_inserts"] > 0 and c["yjs_inserts_missing"] == 0
    assert report["delivery"]["playlist:entries"]["ratio"] == 1.0
    assert report["latency_ms"]["fanout:to_app"]["count"] > 0
    assert report["collab"]["yjs_editors"] == 2 and report["collab"]["offline_bursts"] >= 1


@LIVE
async def test_connect_w2_small(target, tmp_path):
    from simulations.harness import run_scenario
    report = await run_scenario("connect", target, {"users": 8, "devices": 3, "rate": 2.0, "transfer_share": 0.3,
                                                    "churn": 6.0, "churn_offline_s": 0.3},
                                seconds=4, out_dir=str(tmp_path), quiet=True)
    check_report(report, tmp_path)
    w2 = report["w2"]
    assert w2["command_to_all_devices_ms"]["count"] > 10 and w2["transfer_to_playing_ms"]["count"] > 0
    assert w2["lost_states"] == 0 and w2["out_of_order"] == 0 and w2["revision_gaps"] == 0
    c = report["convergence"]
    assert c["replicas_checked"] > 0 and c["diverged"] == 0 and c["devices_behind"] == 0
    assert report["counters"].get("churn:drops", 0) > 0


@LIVE
async def test_reconnect_storm_small(target, tmp_path):
    from simulations.harness import run_scenario
    report = await run_scenario("reconnect-storm", target, {"clients": 30, "rate": 2.0, "storm_at": 1.5,
                                                            "writers_share": 0.2},
                                seconds=4, out_dir=str(tmp_path), quiet=True)
    check_report(report, tmp_path)
    storm = report["storm"]
    assert storm["clients"] == 30 and storm["all_reconnected_s"] is not None
    assert storm["reconnect_ms"]["count"] == 30 and storm["writes_during_outage"] == 12
    c = report["convergence"]
    assert c["resume_expected"] == 12 and c["resume_delivered"] == 12 and c["replicas_behind"] == 0
    assert any(m["kind"] == "storm" for m in report["marks"])


@LIVE
async def test_mixed_small(target, tmp_path):
    from simulations.harness import run_scenario
    from simulations.scenarios.mixed import MIX
    report = await run_scenario("mixed", target, {"users": 20, "rate": 3.0}, seconds=4, out_dir=str(tmp_path),
                                quiet=True)
    check_report(report, tmp_path)
    c = report["convergence"]
    assert c["streams_counted_twice"] == 0 and c["device_groups_diverged"] == 0
    assert c["playlist_replicas_diverged"] == 0 and c["replicas_checked"] == 20 + 40
    assert report["mix"]["weights_percent"] == dict(MIX)
    obs = report["mix"]["observed_percent"]
    reads = sum(v for k, v in obs.items() if k in ("player.state", "playlist.items", "library.contains",
                                                    "library.list", "playlist.get", "player.devices"))
    assert reads > 40        # reads dominate (70 % of actions; heartbeats also count here)


@LIVE
async def test_cli_simulate_against_a_running_server(target, ray_server, tmp_path):
    from syncopate.cli import main
    out = tmp_path / "cli"
    argv = ["simulate", "connect", "--url", ray_server.url, "--secret-file", ray_server.secret_file,
            "--seconds", "2",
            "--users", "3", "--devices", "2", "--period", "1", "--out", str(out), "--quiet", "--no-plots"]
    rc = await asyncio.get_running_loop().run_in_executor(None, main, argv)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"] == "connect" and report["params"]["rate"] == 1.0 and report["ok"]


def test_cli_help_lists_the_scenarios(capsys):
    from syncopate.cli import main
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    for name in ("collab", "connect", "reconnect-storm", "mixed", "scale-model", "peers"):
        assert name in text


# ----------------------------------------------------------------------------------------------------
# faults, on small servers of their own
# ----------------------------------------------------------------------------------------------------
def _fault_row(report, kind):
    rows = [f for f in report["faults"] if f["kind"] == kind]
    assert len(rows) == 1, report["faults"]
    row = rows[0]
    assert "error" not in row, json.dumps(row)
    assert row["acked_before"] > 0 and row["acked_missing_after_recovery"] == 0, json.dumps(row)
    assert row["recovery"]["recovered"], json.dumps(row)
    return row


@LIVE
async def test_faults_kill_host_and_kill_gateway(ray_session, tmp_path):
    from simulations.harness import OwnServer, run_scenario
    loop = asyncio.get_running_loop()
    own = await loop.run_in_executor(None, lambda: OwnServer(hosts=2).start())
    try:
        target = own.target()
        spec = FaultSpec(kill_host_at=1.5)
        rep = await run_scenario("mixed", target, {"users": 16, "rate": 3.0}, seconds=4, faults=spec,
                                 injector=own.injector(spec), out_dir=str(tmp_path / "host"), quiet=True)
        assert rep["convergence"]["ok"], json.dumps(rep["convergence"])
        _fault_row(rep, "kill_host")
        assert rep["ok"]
        spec = FaultSpec(kill_gateway_at=1.5)
        rep = await run_scenario("collab", target, {"playlists": 2, "editors": 3, "rate": 2.0, "yjs_share": 0,
                                                    "offline_share": 0}, seconds=5, faults=spec,
                                 injector=own.injector(spec), out_dir=str(tmp_path / "gw"), quiet=True)
        assert rep["convergence"]["ok"], json.dumps(rep["convergence"])
        row = _fault_row(rep, "kill_gateway")
        assert row["duration_s"] is not None           # the gateway listened again
        assert rep["clients"]["disconnects"] >= rep["clients"]["clients"]   # every client lost its gateway...
        assert rep["clients"]["connects"] >= 2 * rep["clients"]["clients"]  # ...and came back
        assert rep["ok"]
    finally:
        await loop.run_in_executor(None, own.stop)


@LIVE
async def test_faults_restart_redis_and_cut_postgres(ray_session, tmp_path):
    from simulations.harness import OwnServer, run_scenario
    loop = asyncio.get_running_loop()
    both = FaultSpec(restart_redis_at=1.0, cut_postgres=(1.0, 1.0))
    own = await loop.run_in_executor(None, lambda: OwnServer(hosts=2, faults=both).start())
    try:
        assert own.store == "tiered" and own.redis is not None and own.proxy is not None
        target = own.target()
        spec = FaultSpec(restart_redis_at=1.5)
        rep = await run_scenario("mixed", target, {"users": 12, "rate": 3.0}, seconds=4, faults=spec,
                                 injector=own.injector(spec), out_dir=str(tmp_path / "redis"), quiet=True)
        assert rep["convergence"]["ok"], json.dumps(rep["convergence"])
        row = _fault_row(rep, "restart_redis")
        assert row["duration_s"] > 0
        assert "redis (own)" in rep["resources"]["processes"]
        spec = FaultSpec(cut_postgres=(1.5, 1.5))
        rep = await run_scenario("mixed", target, {"users": 12, "rate": 3.0}, seconds=5, faults=spec,
                                 injector=own.injector(spec), out_dir=str(tmp_path / "pg"), quiet=True)
        assert rep["convergence"]["ok"], json.dumps(rep["convergence"])
        row = _fault_row(rep, "cut_postgres")
        assert row["connections_cut"] > 0
        assert row["recovery"]["errors_after_fault"] > 0      # writes during the cut were refused and retried
        assert row["recovery"]["recovery_after_restore_s"] is not None
        assert rep["ok"]
    finally:
        await loop.run_in_executor(None, own.stop)


# ----------------------------------------------------------------------------------------------------
# the scale model
# ----------------------------------------------------------------------------------------------------
def test_scale_model_tiny(tmp_path):
    from simulations.scale_model import main
    rc = main(["--users", "60", "--playlists", "8", "--ops", "40", "--liked", "20", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "report.json").read_text())
    m, p = data["measured"], data["projection"]
    for kind in ("session", "devicegroup", "playlist"):
        assert m["memory_active"][kind]["entities"] > 0 and not m["memory_active"][kind]["errors"]
        assert m["storage"][kind]["snapshot_bytes_mean"] > 0
        assert m["passivation"][kind]["activate_us"] > 0
    assert m["cpu_us_per_op"]["player.next"]["cpu_us"] > 0
    assert m["tick"]["devicegroup"]["entities_ticked"] == 60 and m["tick"]["session"]["entities_ticked"] == 60
    for tier in ("hosts", "gateways", "postgres", "redis"):
        assert p[tier]
    assert p["hosts"]["machines"] >= 1 and p["postgres"]["primaries"] >= 1
    assert p["assumptions"]["plays_per_s"]["value"] == 37_000
    md = (tmp_path / "report.md").read_text()
    assert "## Assumptions" in md and "## Capacity" in md


async def test_a_hosts_sqlite_store_process_counts_as_the_hosts(tmp_path):
    import os

    from simulations.resources import store_children
    from storage.sqlite_process import SQLiteProcessStore

    assert await asyncio.to_thread(store_children, "host-0", os.getpid()) == {}    # blocking: /proc reads
    store = SQLiteProcessStore(tmp_path / "syncopate.db")
    await store.start()
    try:
        assert await asyncio.to_thread(store_children, "host-0", os.getpid()) == {"host-0-store": store._proc.pid}
    finally:
        await store.close()


async def test_the_sampler_counts_the_cpu_seconds_of_its_window():
    """cpu_s (bench_connect's CPU per command) is the CPU the process used between its first sample
    and the sample taken at stop: CPU burnt after the first sample is all in it."""
    import os
    import time as _time

    from simulations.resources import ResourceSampler
    s = ResourceSampler(lambda: {"me": os.getpid()}, interval_s=0.05, include_self=False)
    before = _time.process_time()
    s.start()
    deadline = _time.monotonic() + 10
    while not s.samples:
        assert _time.monotonic() < deadline, "no first sample"
        await asyncio.sleep(0.01)
    t0 = _time.process_time()
    while _time.process_time() - t0 < 0.3:
        sum(range(1000))
    res = await s.stop()
    cpu_s = res["processes"]["me"]["cpu_s"]
    assert 0.27 <= cpu_s <= _time.process_time() - before + 0.03     # /proc counts in 10 ms ticks
    assert res["cpu_window_s"][0] <= res["cpu_window_s"][1]


@pytest.mark.parametrize("script,mode,extra", [
    ("bench_ws_inbound.py", "inbox", ["--sockets", "5"]), ("bench_ws_inbound.py", "queue", ["--sockets", "5"]),
    ("bench_channel_read.py", "framing", ["--streams", "2"]), ("bench_channel_read.py", "stream", ["--streams", "2"]),
])
def test_the_frame_reading_benchmarks_answer_every_frame(script, mode, extra):
    """Both exit non-zero when a frame goes unanswered; a short run of each mode must not."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "simulations" / script), "--mode", mode, "--rounds", "20", *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    frames = 20 * int(extra[1])
    assert out.stdout.startswith(f"{mode}: {frames} frames"), out.stdout
