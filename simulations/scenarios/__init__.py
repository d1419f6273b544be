"""The live scenarios of `syncopate simulate` (docs/simulation.md): name -> Scenario class."""
from __future__ import annotations

import importlib

_MODULES = {"collab": "collab:Collab", "connect": "connect:Connect",
            "reconnect-storm": "reconnect_storm:ReconnectStorm", "mixed": "mixed:Mixed",
            "abuse": "abuse:Abuse"}


def get(name: str):
    mod, _, cls = _MODULES[name].partition(":")
    return getattr(importlib.import_module(f"simulations.scenarios.{mod}"), cls)


NAMES = tuple(_MODULES)
