"""The host's counters (EntityHost.metrics), exported by the adapters: stats() -> the gateway's
/metrics; plain numbers in tests."""
from __future__ import annotations

import bisect

# Upper bounds of the group-commit histograms (the last bucket is everything above the last bound).
COMMIT_MS_BOUNDS = (1, 2, 5, 10, 20, 50, 100)
COMMIT_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

class Metrics:
    """Counters the adapters export (stats(): the gateway's /metrics; plain numbers in tests).
    Budget counters have `budget` or `refused` in their names."""

    def __init__(self) -> None:
        self.commands = 0
        self.activations = 0
        self.phantoms = 0                 # activations that found nothing stored (not acquired)
        self.passivations = 0
        self.commits = 0
        self.committed_entries = 0
        self.commit_seconds = 0.0
        # store.append durations (ms) and entries per commit, as counts per bucket of the bounds above
        self.commit_ms_hist = [0] * (len(COMMIT_MS_BOUNDS) + 1)
        self.commit_size_hist = [0] * (len(COMMIT_SIZE_BOUNDS) + 1)
        self.activation_seconds = 0.0
        self.unknown_commits = 0          # store.append raised: the outcome is unknown (Gap sent)
        self.gaps_sent = 0
        self.effects_sent = 0
        self.effects_retried = 0
        self.effects_acked = 0
        self.asks_sent = 0                # reads of another entity made for an op (actors/asks.py)
        self.asks_refused = 0             # ... answered with a refusal (the command was refused with it)
        self.refused_mailbox = 0          # MAX_MAILBOX reached
        self.refused_not_owner = 0        # placed on another host by the membership view (NOT_OWNER)
        self.handoffs = 0                 # entities passivated and released because the view moved them
        self.refused_pending = 0          # MAX_PENDING reached
        self.refused_active = 0           # MAX_ACTIVE reached and nothing could be passivated in time
        self.budget_passivations = 0      # LRU passivations to stay under MAX_ACTIVE or the memory budget
        self.budget_memory_over = 0       # checks that found the process over its memory budget
        self.budget_stream_closes = 0     # a gateway stream closed: its host-side buffer was over budget
        self.budget_oversized_items = 0   # a reply or push over the item limit, replaced by an error / Gap
        self.budget_frames_split = 0      # batches split to keep every frame under the frame limit
        self.malformed_commands = 0       # command items that failed to decode (answered MALFORMED_FRAME)
        self.erased = 0                   # entities erased (actors/maintenance.py, user data rights)
        self.compacted = 0                # snapshots written on request to drop a user's log entries
        self.errors: dict[str, int] = {}

    def record_commit(self, seconds: float, entries: int) -> None:
        self.commits += 1
        self.commit_seconds += seconds
        self.commit_ms_hist[bisect.bisect_left(COMMIT_MS_BOUNDS, seconds * 1000)] += 1
        self.commit_size_hist[bisect.bisect_left(COMMIT_SIZE_BOUNDS, entries)] += 1

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["commit_ms_hist"], d["commit_size_hist"] = list(self.commit_ms_hist), list(self.commit_size_hist)
        return d
