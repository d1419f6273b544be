"""The op cache (actors/opcache.py) stays the size of its window: rows lapse after OP_RETRY_WINDOW_S
and nothing of them (not even the key kept for the reply budget) stays behind."""
from __future__ import annotations

from actors.opcache import OP_RETRY_WINDOW_S, OPS_REMEMBERED, OpCache


def test_a_steady_stream_of_ops_keeps_only_the_window():
    c = OpCache()
    per_s = 0.5                                   # one write every 2 s, small replies: under the budget
    n = 5 * OPS_REMEMBERED
    for i in range(n):
        c.remember("u1", f"op-{i}", i, b"r" * 40, now=1000.0 + i / per_s)
    window = int(OP_RETRY_WINDOW_S * per_s)
    assert len(c) == window + 1                   # the rows of the last 300 s (both ends)
    assert len(c.at) == len(c)
    # the keys kept for the reply budget are those rows' keys, not every op id since the last rebuild
    assert len(c._with_reply) == len(c)
    assert c.bytes == 40 * len(c)
    assert c.lookup("u1", f"op-{n - 1}") == (n - 1, b"r" * 40)
    assert c.lookup("u1", f"op-{n - window - 2}") is None


def test_the_reply_budget_still_drops_the_oldest_replies_first():
    from actors.opcache import OP_REPLY_BUDGET_BYTES
    c = OpCache()
    size = 4000
    k = OP_REPLY_BUDGET_BYTES // size + 3
    for i in range(k):
        c.remember("u1", f"op-{i}", i, b"x" * size, now=1000.0 + i)
    assert c.bytes <= OP_REPLY_BUDGET_BYTES
    assert c.lookup("u1", "op-0") == (0, None)            # still answered (its version), reply gone
    assert c.lookup("u1", f"op-{k - 1}") == (k - 1, b"x" * size)
    assert len(c._with_reply) == sum(1 for _, r in c.entries.values() if r is not None)
