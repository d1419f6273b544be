"""The device group's part in user data rights (docs/data-rights.md): `export`, everything the
user's device group holds, for the data export. A mixin of DeviceGroupEntity (actors/devicegroup.py).

  export {} -> {devices: [every registered device, online or not], state: the playback state
               (as `state`, or null), recently_played: [{uri, played_at_ms, context_uri}] oldest
               first (all that is kept), stream_counts: {track uri: streams}, counted_events: n,
               context_uri: the context playing (a playlist lists the group as a listener)}
"""
from __future__ import annotations

from actors.args import Args
from actors.entity import Command, Outcome, op


class RightsOps:
    @op("export", role="user")
    def _op_export(self, cmd: Command, a: Args) -> Outcome:
        state = None
        if self.active is not None:
            state = self._playing(self._view(cmd.now_ms), cmd.now_ms, full=True)
        return Outcome(reply={
            "devices": [self._device_value(d) for d in self.devices.values()],
            "state": state,
            "recently_played": [{"uri": r[1], "played_at_ms": r[0], "context_uri": r[2]} for r in self.recent],
            "stream_counts": dict(self.streams),
            "counted_events": len(self.counted_events),
            "context_uri": self.p.get("context_uri"),
        })
