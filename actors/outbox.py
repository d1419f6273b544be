"""The durable outbox: effects to other entities, from commit until their target acknowledges.

Part of EntityHost (a mixin over its state: self.metrics, self._dispatch, self._closed, self.call).
Effects are part of the committed log entry; after the commit they are sent, and kept in the slot's
outbox until the target acknowledges; re-sent with backoff, on re-activation of the source (_recover
after an eviction or an unknown commit outcome), and when a retried op is answered from the op
cache. Targets apply an effect op id once, so a re-send of an acknowledged one changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from actors.entity import SYSTEM, Command
from actors.slot import RECOVER, Slot
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Reply

log = logging.getLogger("syncopate.host")

ACKS_CARRIED = 4096            # acknowledged effect ids carried by the next log entry (beyond: re-sent, harmless)
EFFECT_BACKOFF_S = (0.02, 5.0)  # first retry, cap


@dataclass
class OutEffect:
    """One effect of a committed entry, until its target acknowledges it."""
    cmd: Command
    version: int                         # the source entry that carries it
    durable: bool = True                 # in the log (False: an outcome without records carried it)
    attempts: int = 0
    sending: bool = False
    timer: asyncio.TimerHandle | None = None


class Outbox:
    def _recover(self, slot: Slot) -> None:
        """Activate `slot.key` again (with backoff while the store refuses), so that the outbox of
        what is stored is re-sent even if no client sends it anything."""
        if slot.key in self._recovering or self._closed:
            return
        self._recovering.add(slot.key)

        async def run() -> None:
            delay = EFFECT_BACKOFF_S[0]
            try:
                while not self._closed:
                    try:
                        await self.call(Command(slot.kind, slot.entity_id, RECOVER, {}, SYSTEM))
                        return
                    except SyncopateError as err:
                        if not err.retryable or err.code == ErrorCode.NOT_OWNER:
                            # NOT_OWNER: placed elsewhere now; its new owner's activation re-sends.
                            log.warning("recovery of %s refused: %s", slot.key, err)
                            return
                    # Backoff while the store (or the host's budgets) refuse.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, EFFECT_BACKOFF_S[1])
            finally:
                self._recovering.discard(slot.key)

        self._spawn(run())

    # -- the outbox ------------------------------------------------------------------------------
    def _send_effect(self, slot: Slot, fx: OutEffect) -> None:
        fx.timer = None
        if self._closed or fx.sending or slot.outbox.get(fx.cmd.op_id) is not fx:
            return
        if slot.dead and fx.durable:
            return                    # the recovery's activation re-sends it from the store
        fx.sending = True
        self.metrics.effects_sent += 1
        if fx.attempts:
            self.metrics.effects_retried += 1
        try:
            res = self._dispatch(fx.cmd)
        except Exception as exc:
            log.warning("effect %s on %s: dispatch failed: %s", fx.cmd.op, fx.cmd.key, exc)
            self._effect_retry(slot, fx)
            return
        if res is None:
            self._effect_acked(slot, fx)     # a dispatcher that takes effects over (fire-and-forget)
            return
        fut = asyncio.ensure_future(res)
        fut.add_done_callback(lambda f: self._effect_done(slot, fx, f))

    def _effect_done(self, slot: Slot, fx: OutEffect, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self._effect_retry(slot, fx)
            return
        exc = fut.exception()
        reply = fut.result() if exc is None else None
        err = exc if exc is not None else (reply.error if isinstance(reply, Reply) else None)
        if err is None:
            self._effect_acked(slot, fx)
        elif isinstance(err, SyncopateError) and not err.retryable:
            # The target decided (a refusal is an answer): retrying would get the same refusal.
            log.warning("effect %s on %s refused: %s", fx.cmd.op, fx.cmd.key, err)
            self._effect_acked(slot, fx)
        else:
            self._effect_retry(slot, fx)

    def _effect_retry(self, slot: Slot, fx: OutEffect) -> None:
        fx.sending = False
        if self._closed or slot.outbox.get(fx.cmd.op_id) is not fx:
            return
        delay = min(EFFECT_BACKOFF_S[0] * (2 ** fx.attempts), EFFECT_BACKOFF_S[1])
        fx.attempts += 1
        fx.timer = asyncio.get_running_loop().call_later(delay, self._send_effect, slot, fx)

    def _effect_acked(self, slot: Slot, fx: OutEffect) -> None:
        fx.sending = False
        if slot.outbox.pop(fx.cmd.op_id, None) is None:
            return
        self.metrics.effects_acked += 1
        if fx.durable:
            # Carried by the next log entry, so a re-activation does not send it again.
            slot.acks.append(fx.cmd.op_id)
            if len(slot.acks) > ACKS_CARRIED:
                del slot.acks[:len(slot.acks) - ACKS_CARRIED]
