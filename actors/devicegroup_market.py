"""The device group's account facts: the user's market (the account's country) and the account's
explicit content filter, which the group holds itself (docs/rights.md "The account facts a device
group holds"). A mixin of DeviceGroupEntity (actors/devicegroup.py).

The account entity owns both. When they are set (create) or one changes (update: the country, or
`explicit_content.filter_enabled`), the account emits `market_changed {country, explicit_filter,
as_of}` to the user's device group, an effect through the durable outbox (actors/outbox.py) with
the op id `account:<user>@<version>:market`; `as_of` is that account version. The group keeps
`UserMarket(country, as_of, explicit_filter)` (actors/devicegroup_records.py) and takes a notice
only if it is newer than what it holds, so a late or re-sent one changes nothing; the two facts
travel together, so one `as_of` orders both. A notice stored before the filter existed has no
`explicit_filter`: off, as every account was then.

A group that holds no facts from the account (new, a user without an account, or stored before the
group held them: then it has the gateway's last stamp, `as_of` None) learns them before its first
playback command: the commands that can start a track (`PLAYBACK_MARKET_OPS`) declare
`market_ask`, and the host reads `account:<user> market` first (actors/asks.py), as the user; the op
takes the answer if it is newer, in the same record as the command. So no playback command runs on
a market or filter the account did not give; nothing of the client's (`args.market`,
`args.explicit_filter`) is read.

A change takes effect for the next op; if the track playing may not play under the new facts (not
licensed in the new country, or explicit with the filter now on), the group moves off it as a
takedown does (actors/devicegroup_entitlements.py: the next playable track, or stop), the push with
reason `track_unavailable` and `unavailable.reason` "market" or "explicit".
"""
from __future__ import annotations

from typing import Any

from actors.account import ACCOUNT
from actors.args import Args, Bool, Int, Str
from actors.asks import Ask
from actors.devicegroup_records import UserMarket
from actors.devicegroup_txn import PLAYER_STATE_CHANGED, _err, _Txn
from actors.entity import Command, Outcome, op
from catalog.markets import is_market
from protocols.errors import ErrorCode

# the commands that may start a track: they run on the market of the account (market_ask)
PLAYBACK_MARKET_OPS = ("play", "transfer", "next", "previous", "seek", "queue_add", "autoplay")


def market_ask(entity: Any, cmd: Command) -> Ask | None:
    """A playback command of a group without the account's market reads it from the account first,
    as the commanding user (the account answers its own user, or the system)."""
    if entity.market.as_of is not None:
        return None
    pr = cmd.principal
    spec = entity.ops.get(cmd.op)
    if not pr.system and (pr.user_id != entity.id or (spec is not None and spec.control and not pr.premium)):
        return None                       # authorize refuses it anyway: no read for it
    return Ask(Command(ACCOUNT, entity.id, "market", {}, pr), f"account {entity.id}", "market")


def market_of(answer: Any) -> UserMarket:
    """The account's answer (`market` op, or the fields of a notice) as a UserMarket; INVALID_FIELD
    when it is not {country: ISO 3166-1 alpha-2, as_of: version >= 0, explicit_filter?: bool}
    (absent: off, as an account's notice or answer from before the filter existed)."""
    d = answer if isinstance(answer, dict) else {}
    country, as_of, ef = d.get("country"), d.get("as_of"), d.get("explicit_filter", False)
    if not is_market(country) or not isinstance(as_of, int) or isinstance(as_of, bool) or as_of < 0 \
            or not isinstance(ef, bool):
        raise _err(ErrorCode.INVALID_FIELD, "account facts are {country: ISO 3166-1 alpha-2 code, "
                                            "as_of: version >= 0, explicit_filter?: bool}")
    return UserMarket(country, as_of, ef)


class MarketOps:
    def _txn(self, cmd: Command) -> _Txn:
        """The working copy of a playback command, on the account's facts: the group's own, or
        the answer of market_ask when it is newer (stored with the command's record)."""
        t = _Txn(self, cmd.now_ms)
        asked = (cmd.asked or {}).get("market")
        if asked is not None:
            learned = market_of(asked)
            if self.market.newer(learned):
                t.set_market(learned)
        return t

    @op("market_changed", system=True, args={"country": Str(required=True), "as_of": Int(lo=0, required=True),
                                             "explicit_filter": Bool()})
    def _op_market_changed(self, cmd: Command, a: Args) -> Outcome:
        """The account's country or explicit content filter was set or changed (its effect; see the
        module doc)."""
        new = market_of({k: v for k, v in a.items() if v is not None})
        if not self.market.newer(new):
            return Outcome(reply={"changed": False})
        t = _Txn(self, cmd.now_ms)
        self._settle(t)                   # up to now on the facts it was playing by
        moved = new.mirror() != {k: t.p[k] for k in ("market", "explicit_filter")}
        t.set_market(new)
        if moved:
            self._move_off_unavailable(t)     # a takedown's move if the track may not play now
            if t.reason is None and self.devices:
                t.set_reason(PLAYER_STATE_CHANGED)    # the cluster's player.market / explicit_filter changed
        return self._commit(t, reply={"changed": True})
