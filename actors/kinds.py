"""The entity kinds a host can activate: kind name -> class."""
from __future__ import annotations

from actors.entity import Entity


def default_kinds() -> dict[str, type[Entity]]:
    from actors.account import AccountEntity, AppEntity, DirectoryEntity
    from actors.devicegroup import DeviceGroupEntity
    from actors.erasure import ErasureRegistry
    from actors.playlist import PlaylistEntity
    from actors.session import SessionEntity

    return {cls.kind: cls for cls in (PlaylistEntity, DeviceGroupEntity, SessionEntity,
                                          AccountEntity, AppEntity, DirectoryEntity, ErasureRegistry)}


def load_kinds(ref: str | None) -> dict[str, type[Entity]]:
    """Resolve "module:function" (the server spec's `kinds`) to the kind registry."""
    import importlib
    if not ref:
        return default_kinds()
    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)()
