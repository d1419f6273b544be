"""CPython 3.11's shared attribute tables, for the objects a gateway keeps per open socket.

An instance of a class without `__slots__` keeps its attribute values in an array beside a key
table the class's instances share, and only builds a dict of its own (a few hundred bytes to
1.6 KB) when it assigns a name the shared table cannot take. The table takes at most 30 names,
and it shrinks its room by one each time an instance is created (`init_inline_values`), so a
name first assigned only after many instances exist does not fit. aiohttp declares much of its
per-connection state as class-level defaults that an instance first assigns late (a response's
`_closed`, a writer's `output_size` on its first write): after a burst of connections, each
later socket carried a dict for them (`simulations.bench_ws_memory` showed 1.6 KB a socket on
the websocket response, 464 B on the HTTP writer).

Two remedies, used where they fit: `lazy_defaults` lists those names for a class of ours to
keep in slots (gateway/inbox.py `InboxResponse`, whose 33 names over a life exceed 30 anyway),
and `prime` assigns them once on a throwaway instance at import, before any connection exists,
so the shared table holds them (aiohttp's `StreamWriter`, created inside aiohttp's own loop).
tests/test_ws_inbox.py counts the slotted response's names; tests/test_keytables.py measures
the dict an unprimed class builds per instance and its absence once primed.
"""
from __future__ import annotations

from typing import Any, Callable


def lazy_defaults(*classes: type) -> dict[str, Any]:
    """The attributes these classes declare with a plain default at class level (`_closed: bool =
    False`, `output_size: int = 0`), which an instance gets its own of only when first assigned.
    Base first: a subclass's default overrides its base's."""
    out: dict[str, Any] = {}
    for cls in classes:
        for name, value in vars(cls).items():
            if not name.startswith("__") and (value is None or isinstance(value, (bool, int, float, str))):
                out[name] = value
    return out


def prime(make: Callable[[], object], *classes: type) -> None:
    """Put `classes`' lazily assigned names into the shared key table of `make()`'s class by
    assigning each, with its default, on one throwaway instance. Call it before the class has
    many instances (at import): the table's room shrinks with each instance created."""
    obj = make()
    for name, value in lazy_defaults(*classes).items():
        setattr(obj, name, value)
