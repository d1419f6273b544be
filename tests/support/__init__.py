"""Shared test support: the catalog builder (catalog.py), the entity driver on the real host
(entities.py), the websocket client and REST helpers (ws.py, rest.py), the Node Yjs client (ynode.py)."""
