"""User data rights on the gateway (docs/data-rights.md): the export, the deletion's REST entry and
the refusal of a deleted user's tokens.

  GET    /v1/me/data-export   everything the server holds about the caller, as JSON, assembled from
                              the entities through the normal routing with the caller's own rights
  DELETE /v1/me               body {"confirm_user_id": "<the caller's own id>"}: erase the caller
                              (gateway/erasure.py); answers the receipt once every step is done

Both need the token's `user-read-private` and the extension scope `user-data-rights`
(gateway/scopes.py). A missing or wrong confirmation is refused (400; another user's id: 403) and
changes nothing.

Refusing tokens (`DataRights.check`, from GatewayContext.check_session on every REST request and
socket): a user whose deletion is in progress is refused outright; after it, a token issued
(`iat`) before the deletion finished is refused (401), through the registry's tombstones (keyed by
pseudonym, gateway/erasure.pseudonym). A gateway learns of deletions three ways: the one it runs
itself (at once), the session's `account_deleted` push (every gateway holding a socket of the
user, at once), and a poll of the registry every `POLL_S` (every other gateway, within POLL_S).
The poll is incremental (tombstones added since the last version seen) and also resumes
deletions left pending by a crashed gateway (older than RESUME_AFTER_MS).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from actors.account import ACCOUNT
from actors.entity import SYSTEM, Command, Principal
from actors.erasure import ERASURE, REGISTRY
from gateway.erasure import Deletion, pseudonym
from gateway.http import add_route, ctx, json_body, json_response, principal
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP, PLAYLIST, SESSION

log = logging.getLogger("syncopate.gateway")

POLL_S = 2.0
RESUME_AFTER_MS = 30_000
PAGE = 100                      # playlist items per call (the entity's maximum)
EXPORT_FORMAT = 1


class DataRights:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.secret = ctx.auth.derived_key(b"syncopate erasure pseudonyms")
        self.pending: set[str] = set()               # deletions in progress (registry + local)
        self.tombstones: dict[str, int] = {}         # pseudonym -> deleted at (ms)
        self.version = 0                             # the registry version the tombstones are from
        self._running: dict[str, asyncio.Task] = {}
        self.fault = None                            # test hook: Deletion.fault

    # -- refusing tokens -----------------------------------------------------------------------------
    def check(self, p: Principal) -> None:
        uid = p.user_id
        if uid in self.pending:
            raise SyncopateError(ErrorCode.UNAUTHORIZED, "this account is being deleted")
        if self.tombstones:
            at = self.tombstones.get(pseudonym(self.secret, uid))
            if at is not None and p.issued_at * 1000 <= at:
                raise SyncopateError(ErrorCode.UNAUTHORIZED, "this account was deleted")

    def account_deleted(self, uid: str) -> None:
        """The session's push: refuse the user at once and close their sockets on this gateway."""
        self.pending.add(uid)
        for conn in self.ctx.hub.user_conns(uid):
            conn.close(4401, "account deleted")

    async def refresh(self) -> dict:
        st = await self.ctx.call(ERASURE, REGISTRY, "status", {"after": self.version})
        self.tombstones.update(st["tombstones"])
        horizon = int(time.time() * 1000) - 30 * 86400 * 1000
        self.tombstones = {k: at for k, at in self.tombstones.items() if at > horizon}
        self.pending = set(st["pending"]) | set(self._running)
        self.version = st["version"]
        return st

    async def watch(self) -> None:
        """The poll (see the module docstring); runs for the gateway's lifetime."""
        first = True
        while True:
            try:
                st = await self.refresh()
                now = int(time.time() * 1000)
                for uid in st["pending"]:
                    stale = now - st["started_ms"].get(uid, now) > RESUME_AFTER_MS
                    if uid not in self._running and (first or stale):
                        self._start(uid)
                first = False
            except SyncopateError as err:
                log.debug("erasure registry poll failed: %s", err)
            except Exception:
                log.exception("erasure registry poll failed")
            await asyncio.sleep(POLL_S)

    # -- deleting ------------------------------------------------------------------------------------
    def _start(self, uid: str) -> asyncio.Task:
        task = self._running.get(uid)
        if task is None:
            deletion = Deletion(self._reply, self.secret, fault=self.fault, pipeline=self._pipeline())
            self.pending.add(uid)
            task = self._running[uid] = asyncio.get_running_loop().create_task(self._delete(deletion, uid))
            task.add_done_callback(self._finished)
        return task

    def _pipeline(self):
        """The event pipeline's part of a deletion (its bus and counts store), None without one."""
        if self.ctx.events is None or self.ctx.event_bus is None:
            return None
        from syncopate.events.erasure import PipelineErasure
        return PipelineErasure(self.ctx.event_bus, self.ctx.events)

    @staticmethod
    def _finished(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            # the registry still has it pending: the poll resumes it (after RESUME_AFTER_MS)
            log.warning("a deletion failed and will be resumed: %r", task.exception())

    async def stop(self) -> None:
        """Gateway shutdown: deletions in flight stop where they are (as in a crash); the registry's
        pending record has the next gateway resume them."""
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reply(self, cmd: Command) -> Any:
        reply, _ = await self.ctx.call_versioned(cmd)
        return reply

    async def _delete(self, deletion: Deletion, uid: str) -> dict:
        try:
            receipt = await deletion.run(uid)
        finally:
            self._running.pop(uid, None)
        self.tombstones[pseudonym(self.secret, uid)] = receipt.finished_ms
        self.pending.discard(uid)
        return receipt.public()

    async def delete(self, uid: str) -> dict:
        # Shielded: a client that disconnects does not cancel the deletion half way (nor would a
        # cancellation lose it: the registry's pending record resumes it, see watch()).
        return await asyncio.shield(self._start(uid))

    # -- exporting -----------------------------------------------------------------------------------
    async def export(self, p: Principal) -> dict:
        c, uid = self.ctx, p.user_id
        try:
            account = await c.call(ACCOUNT, uid, "export", {}, principal=p)
        except SyncopateError as err:
            if err.code != ErrorCode.NOT_FOUND:
                raise
            account = None                   # a token minted for a user with no account
        session, devices = await asyncio.gather(c.call(SESSION, uid, "export", {}, principal=p),
                                                c.call(DEVICE_GROUP, uid, "export", {}, principal=p))
        ids = [x["id"] for x in session["library"]["playlist"]]
        ids += [x["playlist_id"] for x in session["collaborating"] if x["playlist_id"] not in ids]
        owned, followed, collaborating = [], [], []
        roles = {x["playlist_id"]: x["role"] for x in session["collaborating"]}
        for pid, doc in zip(ids, await asyncio.gather(*(self._playlist(p, pid) for pid in ids))):
            if doc is None and pid in roles:
                # a former collaborator who can no longer read the playlist: their own entries in it
                mine = await self._own_entries(uid, pid)
                if mine:
                    collaborating.append({"id": pid, "role": roles[pid], "accessible": False, "items": mine})
                continue
            if doc is None:
                continue
            if doc["owner"]["id"] == uid:
                owned.append(doc)
            elif pid in roles:
                collaborating.append({**doc, "role": roles[pid]})
            else:
                followed.append(doc)
        return {"format": EXPORT_FORMAT, "user_id": uid, "exported_at_ms": int(time.time() * 1000),
                "account": account,
                "library": {k: v for k, v in session["library"].items() if k != "playlist"},
                "playlists": {"owned": owned, "followed": followed, "collaborating": collaborating},
                "devices": devices["devices"], "player": devices["state"],
                "recently_played": devices["recently_played"],
                "listening": {"stream_counts": devices["stream_counts"], "counted_events": devices["counted_events"],
                              "counted_plays": await self._counted_plays(uid)},
                "sessions": {"connections": session["connections"],
                             "signed_out_devices": session["signed_out_devices"]}}

    async def _counted_plays(self, uid: str) -> list[dict] | None:
        """The user's plays the event pipeline counted (docs/events.md), outside private sessions,
        newest first: every page of its recently played. None without a pipeline."""
        reader = self.ctx.events
        if reader is None:
            return None
        plays: list[dict] = []
        before = None
        while True:
            page = await reader.recently_played(uid, 50, before, None)
            plays += page["plays"]
            if not page["more"] or not page["plays"]:
                return plays
            before = page["plays"][-1]["played_at_ms"]

    async def _own_entries(self, uid: str, pid: str) -> list[dict]:
        """The entries `uid` added to a playlist they can no longer read (read by the system, and
        only theirs leave: the rest of the playlist is someone else's)."""
        try:
            rows = await self._read_items(SYSTEM, pid)
        except SyncopateError as err:
            if err.code == ErrorCode.NOT_FOUND:
                return []
            raise
        return [i for i in rows if i["added_by"] == uid]

    async def _read_items(self, p: Principal, pid: str) -> list[dict]:
        items: list = []
        while True:
            page = await self.ctx.call(PLAYLIST, pid, "items", {"offset": len(items), "limit": PAGE}, principal=p)
            items += page["items"]
            if len(items) >= page["total"] or not page["items"]:
                return items

    async def _playlist(self, p: Principal, pid: str) -> dict | None:
        """The playlist and all its entries, read with the user's own rights (None: no longer
        visible to them, e.g. a private playlist they were removed from)."""
        try:
            doc = await self.ctx.call(PLAYLIST, pid, "get", {}, principal=p)
            items = await self._read_items(p, pid)
        except SyncopateError as err:
            if err.code == ErrorCode.NOT_FOUND:
                return None
            raise
        return {"id": pid, "name": doc["name"], "description": doc["description"], "public": doc["public"],
                "collaborative": doc["collaborative"], "owner": doc["owner"], "snapshot_id": doc["snapshot_id"],
                "items": items}


# -- REST ------------------------------------------------------------------------------------------
def setup(app: web.Application) -> None:
    add_route(app, "GET", "/v1/me/data-export", get_export)
    add_route(app, "DELETE", "/v1/me", delete_me)


async def get_export(request: web.Request) -> web.Response:
    return json_response(await ctx(request).data_rights.export(principal(request)),
                         headers={"Content-Disposition": 'attachment; filename="syncopate-data-export.json"'})


async def delete_me(request: web.Request) -> web.Response:
    p = principal(request)
    body = await json_body(request, required=True)
    if not isinstance(body, dict) or set(body) != {"confirm_user_id"}:
        raise SyncopateError(ErrorCode.BAD_REQUEST, 'the body must be {"confirm_user_id": "<your user id>"}')
    confirm = body["confirm_user_id"]
    if not isinstance(confirm, str):
        raise SyncopateError(ErrorCode.BAD_REQUEST, "confirm_user_id must be your user id")
    if confirm != p.user_id:
        raise SyncopateError(ErrorCode.FORBIDDEN, "confirm_user_id is not your user id: a user deletes only themself")
    return json_response(await ctx(request).data_rights.delete(p.user_id))

