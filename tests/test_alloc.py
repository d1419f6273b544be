"""syncopate/alloc.py: freed C-heap memory held inside the allocator's arenas goes back to the system."""
import gc
import threading

from syncopate.alloc import Trimmer, rss_bytes


def _fragment() -> list:
    """~60 MB of 4 KiB allocations (the C heap, not Python's small-object arenas), then all but every
    16th freed: the heap's top is still in use, so glibc keeps the freed pages below it resident."""
    blocks = [bytearray(4000) for _ in range(15_000)]
    for b in blocks:
        b[0] = 1                                    # touched: resident
    kept = blocks[::16]
    del blocks
    gc.collect()
    return kept


def test_a_trim_gives_back_the_free_pages_of_a_fragmented_heap():
    t = Trimmer()
    assert t.available                              # glibc on the machines this runs on
    t.trim_once()
    kept = _fragment()
    before = rss_bytes()
    gave = t.trim_once()
    assert gave > 20 << 20, f"a trim gave back only {gave >> 20} MB"
    assert rss_bytes() < before - (20 << 20)
    assert t.trims == 2 and t.released >= gave
    assert len(kept) == 15_000 // 16 + 1


def test_the_trimmer_thread_runs_on_its_schedule_and_stops():
    t = Trimmer(every_s=0.01)
    done = threading.Event()
    orig = t.trim_once

    def counted() -> int:
        n = orig()
        if t.trims >= 3:
            done.set()
        return n

    t.trim_once = counted
    t.start()
    assert done.wait(5.0)
    t.stop()
    assert not t._thread.is_alive()
