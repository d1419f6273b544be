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
