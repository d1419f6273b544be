"""syncopate/memdebug.py: the opt-in memory probe finds what a process keeps, and who keeps it."""
import tracemalloc

from actors.entity import Command
from syncopate.memdebug import Probe, compare, holders


class _Keeper:
    def __init__(self) -> None:
        self.kept: dict[int, Command] = {}


def test_probe_reports_growth_by_type_traceback_and_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCOPATE_TRACEMALLOC_REFS", "Command")
    keeper = _Keeper()
    tracemalloc.start(8)
    try:
        probe = Probe("test", tmp_path, [])
        first = probe.probe()
        keeper.kept.update({i: Command("library", f"u{i}", "save", {"uris": ["x" * 50]}) for i in range(2000)})
        second = probe.probe()
    finally:
        tracemalloc.stop()
    text = second.read_text()
    counts = text.split("## object count change since the previous probe")[1]
    assert "+2000  Command" in counts
    assert "library.save 2000" in text                     # which commands
    assert "_Keeper" in text.split("### Command")[1]        # and who holds them
    grown = "\n".join(compare(str(first.with_suffix(".tracemalloc")), str(second.with_suffix(".tracemalloc"))))
    assert "test_memdebug.py" in grown.split("## growth by line")[1].splitlines()[1]


def test_holders_of_a_type_with_no_instances():
    assert holders("NoSuchTypeHere") == ["### NoSuchTypeHere: 0 instances"]


def test_stats_lines_show_the_c_heap_the_grown_types_and_new_instances():
    from syncopate.memdebug import Stats
    keeper = _Keeper()
    stats = Stats("test", watch=["Command"])
    first = stats.step()
    assert first["malloc_uordblks"] > 0 and first["pymalloc_arenas"] > 0 and first["rss_mb"] > 0
    blobs = [bytearray(100_000) for _ in range(100)]          # ~10 MB in the C heap (over pymalloc's 512 bytes)
    keeper.kept.update({i: Command("session", f"u{i}", "library_save", {}) for i in range(300)})
    second = stats.step()
    assert second["malloc_uordblks"] - first["malloc_uordblks"] > 8
    # 300 more Commands than at the first step; the total also counts any other test left alive
    grown = {t: (n, total) for t, n, total in second["types_grown"]}
    assert grown["Command"][0] == 300 and grown["Command"][1] >= 300
    new = second["new_Command"]
    assert len(new) == 6 and all("library_save" in r for r, _ in new) and all("dict(300)" in h[0] for _, h in new)
    assert len(blobs) == 100


def test_slopes_of_a_stats_directory(tmp_path):
    import json
    from syncopate.memdebug import slopes
    rows = [{"t": t, "rss_mb": 100 + t / 3600 * 36, "smaps_anon_maps": 50.0, "malloc_uordblks": 20.0,
             "malloc_fordblks": 5 + t / 3600 * 12, "pymalloc_allocated_blocks_mb": 30.0, "gc_objects": 1000}
            for t in range(0, 1800, 60)]
    (tmp_path / "host-0-7.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = slopes(str(tmp_path), 300)
    line = next(x for x in table if x.startswith("| host-0-7 "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "300-1740" and cells[2] == "+36.0" and cells[3] == "+0.0" and cells[5] == "+12.0"


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_probe_names_the_cyclic_garbage_its_collection_frees(tmp_path):
    import gc
    gc.disable()                   # the cycles below must still be there when the probe collects
    tracemalloc.start(4)
    try:
        for _ in range(500):
            _Cyclic()
        text = Probe("test", tmp_path, []).probe().read_text()
    finally:
        tracemalloc.stop()
        gc.enable()
    garbage = text.split("## unreachable objects the collection found")[1].split("## some of them")[0]
    assert any(line.split() == ["500", "_Cyclic"] for line in garbage.splitlines())
    assert "_Cyclic: _Cyclic" in text.split("## some of them")[1]
    assert not gc.garbage                                   # let go after counting


def test_stats_lines_count_arenas_collections_and_sqlite(tmp_path):
    import sqlite3
    import time
    from syncopate.memdebug import stats_line
    db = sqlite3.connect(str(tmp_path / "x.db"))
    db.execute("create table t(x)")
    db.executemany("insert into t values (?)", [(b"x" * 1000,) for _ in range(2000)])
    line = stats_line("test", time.monotonic())
    assert line["malloc_arenas"] >= 1
    assert len(line["gc_collections"]) == 3 and len(line["gc_counts"]) == 3
    assert line["sqlite_mb"] > 0.5                          # its page cache, in glibc, unseen by Python
    db.close()
