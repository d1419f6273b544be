"""Checkpoint stores: one small contract (storage.base.Store) and a backend per technology."""
from storage.base import Append, Loaded, Record, Snapshot, Store

__all__ = ["Append", "Loaded", "Record", "Snapshot", "Store"]
