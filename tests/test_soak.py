"""simulations/soak.py: the slope verdict on synthetic RSS series (a flat one, a leaking one, a
process restarted in the middle)."""
from simulations.soak import analyse


def report(series):
    return {"resources": {"samples": [{"t": t, "label": label, "pids": pids, "rss_mb": v}
                                      for label, pids, pts in series for t, v in pts]}}


def test_flat_leaking_and_restarted_processes():
    flat = [(t, 120.0 + (1.5 if t % 20 < 10 else -1.5)) for t in range(0, 1800, 5)]
    leak = [(t, 100.0 + t * 290 / 3600) for t in range(0, 1800, 5)]           # 290 MB an hour
    before = [(t, 110.0) for t in range(0, 900, 5)]
    after = [(t, 130.0) for t in range(905, 1800, 5)]                          # a new process at 905 s
    rows = {r["process"] + r["pids"]: r for r in analyse(report([
        ("gateway", "[1]", flat), ("host-0", "[2]", leak), ("host-1", "[3]", before), ("host-1", "[4]", after)]),
        warmup_s=300)}
    assert abs(rows["gateway[1]"]["slope_mb_per_hour"]) < 1
    assert 285 < rows["host-0[2]"]["slope_mb_per_hour"] < 295
    # the restart is two lines, each flat: the step between them is not a leak
    assert rows["host-1[3]"]["slope_mb_per_hour"] == 0 and rows["host-1[4]"]["slope_mb_per_hour"] == 0
    assert rows["host-1[4]"]["from_s"] >= 905 + 300


def test_the_heap_slope_beside_the_rss_slope():
    """RSS that grows by file-backed pages (a mapped file paged in) with a flat heap: the RSS slope is
    the verdict's, the anonymous slope says the heap did not grow; a report without anon_mb has none."""
    samples = [{"t": t, "label": "host-0", "pids": [7], "rss_mb": 100.0 + t * 36 / 3600, "anon_mb": 80.0}
               for t in range(0, 1800, 5)]
    samples += [{"t": t, "label": "gateway", "pids": [8], "rss_mb": 90.0} for t in range(0, 1800, 5)]
    rows = {r["process"]: r for r in analyse({"resources": {"samples": samples}}, warmup_s=300)}
    assert 35 < rows["host-0"]["slope_mb_per_hour"] < 37
    assert rows["host-0"]["anon_slope_mb_per_hour"] == 0
    assert rows["gateway"]["anon_slope_mb_per_hour"] is None


def test_the_store_size_is_reported_apart_from_the_processes():
    from simulations.soak import store_growth
    store = [{"t": t, "mb": 10.0 + t * 50 / 3600} for t in range(0, 1800, 10)]           # 50 MB an hour of data
    rep = {"resources": {"samples": [], "store_samples": store}}
    g = store_growth(rep, 300)
    assert 49 < g["slope_mb_per_hour"] < 51 and g["from_s"] >= 300
    assert analyse(rep, 300) == []                     # not a process: no line in the verdict's table
    assert store_growth({"resources": {"samples": []}}, 300) is None


def test_dir_bytes_counts_the_files_under_a_directory(tmp_path):
    from simulations.resources import dir_bytes
    (tmp_path / "a.db").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.db-wal").write_bytes(b"y" * 234)
    assert dir_bytes(str(tmp_path)) == 1234


def test_a_step_at_a_fault_is_not_a_slope():
    """The survivor of a killed host takes its entities (a step up), then stays flat: one line through
    it all is a steep slope; fitted within the segments around the fault it is flat, the step printed.
    A process that keeps growing after the fault is still caught."""
    fault = 900
    survivor = [(t, 100.0 + (0 if t < fault else 21.0 + (5.0 if t < fault + 60 else 0))) for t in range(0, 1800, 5)]
    leaker = [(t, 100.0 + t * 40 / 3600 + (0 if t < fault else 21.0)) for t in range(0, 1800, 5)]
    rep = report([("host-1", "[3]", survivor), ("gateway", "[1]", leaker)])
    rep["faults"] = [{"kind": "kill_host", "at_s": fault}]
    rows = {r["process"]: r for r in analyse(rep, warmup_s=300, settle_s=120)}
    s = rows["host-1"]
    assert s["segments"] == 2 and s["slope_mb_per_hour"] == 0 and s["steps_mb"] == [21.0]
    assert s["one_line_mb_per_hour"] > 50                  # what one line through the step says
    g = rows["gateway"]
    assert 39 < g["slope_mb_per_hour"] < 41 and 20 < g["steps_mb"][0] < 22
    # the settle window is left out: a sample at fault + 60 s (the transient) is not in any segment
    assert analyse(rep, warmup_s=300, settle_s=0)[1]["slope_mb_per_hour"] != 0


def test_the_verdict_judges_server_processes_over_a_long_enough_window(tmp_path, capsys):
    """The load generator keeps its measurements (not a server process: printed, not judged); a host
    restarted late has a few minutes of samples (printed, not judged); a falling line passes."""
    import json

    from simulations.soak import main
    samples = [{"t": t, "label": "gateway", "pids": [1], "rss_mb": 100.0 - t * 5 / 3600} for t in range(0, 1800, 5)]
    samples += [{"t": t, "label": "harness (load generator)", "pids": [2], "rss_mb": 100.0 + t * 70 / 3600}
                for t in range(0, 1800, 5)]
    samples += [{"t": t, "label": "host-0", "pids": [3], "rss_mb": 100.0 + (t - 1200) * 30 / 3600}
                for t in range(1200, 1800, 5)]       # restarted at 1200 s: 300 s after its warm-up
    rep = {"resources": {"samples": samples, "processes": {"gateway": {"server": True}, "host-0": {"server": True},
                                                           "harness (load generator)": {"server": False}}}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(rep))
    assert main([str(path), "--warmup-s", "300"]) == 0
    out = capsys.readouterr().out
    assert "no: not a server process" in out and "no: 295 s of samples" in out and "1 server processes judged" in out
    assert main([str(path), "--warmup-s", "300", "--min-window-s", "200"]) == 1     # the host's 30 MB/h judged
