"""Deleting a user's data (docs/data-rights.md): every step a command to an entity through the
normal routing, driven by the durable erasure registry (actors/erasure.py), so a deletion that
crashes half way is resumed and completed, and running it again changes nothing.

The steps, each idempotent:
  1. registry.begin            the durable "deletion in progress" record (acknowledged once
                               committed: from here the deletion completes whatever crashes)
  2. session.account_deleted   every socket of the user is closed; gateways refuse their tokens;
     registry.plan             the playlists to visit (library: owned and followed; the
                               collaboration index; the context the device group plays), recorded
                               once so a resumed deletion visits the same ones
  3. per playlist: forget_user
       someone else's: the user's roles go, their entries are attributed to ANONYMOUS (Yjs
                       updates), then COMPACT: a snapshot replaces the log entries naming them
       their own:      retired (NOT_FOUND to all; live subscriptions end), unfollowed in the
                       followers' libraries, dropped from collaborators' indexes, then ERASE
  4. ERASE devicegroup, session, account of the user (records, snapshots, owners rows)
  5. directory users: remove, COMPACT; then ERASE the user's entities again (a late effect may
                               have written one since step 4)
  6. the event pipeline        once the consumer has applied every bus entry up to the last one now,
                               the user's per-event rows are anonymised and their bus entries removed
                               (syncopate/events/erasure.py; skipped without a pipeline)
  7. registry.done             the user id leaves the registry; a tombstone keyed by a pseudonym
                               (HMAC of the id) keeps refusing old tokens; COMPACT the registry

`call(cmd)` runs one command and answers its reply (raises SyncopateError): the gateway's
dispatcher in the server, a LocalCluster's host in tests. `fault(step)` is a test hook called
before each step (a test raises from it to crash the deletion there, or returns an awaitable the
deletion waits for: a late write at that point).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from actors.account import ACCOUNT, DIRECTORY
from actors.entity import SYSTEM, Command
from actors.erasure import ERASURE, REGISTRY
from actors.maintenance import COMPACT, ERASE
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import DEVICE_GROUP, PLAYLIST, SESSION

# Who an anonymised entry was added by. '@' never starts a user id (gateway/auth.py refuses such
# tokens), so no account can ever be this user; the same for every deleted user (not linkable).
ANONYMOUS = "@deleted-user"

Call = Callable[[Command], Awaitable[Any]]
RETRY_S = 30.0


def pseudonym(secret: bytes, user_id: str) -> str:
    """HMAC-SHA256(secret, user id): what the registry keeps of a deleted user to refuse old tokens.
    Without the server's secret it can't be linked to the id."""
    return hmac.new(secret, b"erased-user:" + user_id.encode(), hashlib.sha256).hexdigest()


@dataclass
class Receipt:
    deletion_id: str
    started_ms: int
    finished_ms: int
    playlists_anonymised: int
    playlists_deleted: int
    entities_erased: int
    listening_events_anonymised: int = 0

    def public(self) -> dict:
        return {"deletion_id": self.deletion_id, "started_ms": self.started_ms, "finished_ms": self.finished_ms,
                "playlists_anonymised": self.playlists_anonymised, "playlists_deleted": self.playlists_deleted,
                "entities_erased": self.entities_erased,
                "listening_events_anonymised": self.listening_events_anonymised}


class Deletion:
    def __init__(self, call: Call, secret: bytes, *, fault: Callable[[str], None] | None = None,
                 pipeline: Any = None) -> None:
        self._call = call
        self._secret = secret
        self.fault = fault
        self.pipeline = pipeline            # syncopate/events/erasure.PipelineErasure, or None

    async def _do(self, kind: str, ident: str, op: str, args: dict | None = None, op_id: str | None = None) -> Any:
        """One step's command; a retryable refusal (a host restarting, an entity whose effects are
        still on their way: ERASE) is retried with backoff for RETRY_S, then raised (the deletion
        stays pending and is resumed)."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + RETRY_S, 0.02
        while True:
            try:
                return await self._call(Command(kind, ident, op, dict(args or {}), SYSTEM, op_id=op_id))
            except SyncopateError as err:
                if not err.retryable or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)          # backoff between retries, not a synchronisation
            delay = min(delay * 2, 1.0)

    async def _step(self, name: str) -> None:
        if self.fault is not None:
            r = self.fault(name)
            if inspect.isawaitable(r):
                await r

    async def begin(self, user: str) -> dict:
        """Step 1: the durable record (a pending deletion of the user is answered as it is)."""
        await self._step("begin")
        return await self._do(ERASURE, REGISTRY, "begin",
                              {"user_id": user, "deletion_id": secrets.token_urlsafe(18)})

    async def pending(self) -> list[str]:
        return (await self._do(ERASURE, REGISTRY, "status"))["pending"]

    async def run(self, user: str) -> Receipt:
        """Steps 1-7 for `user`; resumes a deletion in progress."""
        begun = await self.begin(user)
        plan = begun["plan"]
        # Step 2. Socket closing is repeated on a resume: a crash may have come before it.
        await self._step("sockets")
        sess = await self._do(SESSION, user, "account_deleted")
        if plan is None:
            await self._step("plan")
            dg = await self._do(DEVICE_GROUP, user, "export")
            ids = list(sess["playlists"]) + list(sess["collaborating"])
            ctx_uri = dg.get("context_uri")
            if isinstance(ctx_uri, str) and ctx_uri.startswith("spotify:playlist:"):
                ids.append(ctx_uri.rpartition(":")[2])
            plan = (await self._do(ERASURE, REGISTRY, "plan", {"user_id": user, "playlists": ids}))["plan"]
        anonymised = deleted = erased = 0
        # Step 3.
        for pid in plan:
            await self._step(f"playlist:{pid}")
            try:
                r = await self._do(PLAYLIST, pid, "forget_user", {"user_id": user, "anonymous_id": ANONYMOUS})
            except SyncopateError as err:
                if err.code != ErrorCode.NOT_FOUND:
                    raise
                continue                        # erased by an earlier run, or never created
            if r["owned"]:
                for f in r["followers"]:
                    await self._do(SESSION, f, "library_unfollow_playlist", {"playlist_id": pid},
                                   op_id=f"erasure:{pid}:unfollow")
                for c in r["collaborators"]:
                    await self._do(SESSION, c, "playlist_role", {"playlist_id": pid, "role": None},
                                   op_id=f"erasure:{pid}:role")
                await self._step(f"erase:{pid}")
                erased += (await self._do(PLAYLIST, pid, ERASE))["erased"]
                deleted += 1
            else:
                await self._step(f"compact:{pid}")
                await self._do(PLAYLIST, pid, COMPACT, {"forget": user})
                anonymised += 1
        # Step 4.
        for kind in (DEVICE_GROUP, SESSION, ACCOUNT):
            await self._step(f"erase:{kind}")
            erased += (await self._do(kind, user, ERASE))["erased"]
        # Step 5.
        await self._step("directory")
        await self._do(DIRECTORY, "users", "remove", {"id": user})
        await self._do(DIRECTORY, "users", COMPACT, {"forget": user})
        # The sweep: an effect that was on its way to one of the user's entities (sent before step 3
        # took the user out of a playlist, delivered after step 4) may have written it again.
        await self._step("sweep")
        for kind in (DEVICE_GROUP, SESSION, ACCOUNT):
            erased += (await self._do(kind, user, ERASE))["erased"]
        # Step 6. The device group is erased (its outbox delivered): no event of the user can be
        # published any more, so the bus's tail from here on is after all of them.
        events = 0
        if self.pipeline is not None:
            await self._step("pipeline")
            events = (await self._pipeline(user)).events_anonymised
        # Step 7.
        await self._step("done")
        try:
            done = await self._do(ERASURE, REGISTRY, "done",
                                  {"user_id": user, "pseudonym": pseudonym(self._secret, user)})
        except SyncopateError as err:
            if err.code != ErrorCode.NOT_FOUND:
                raise
            # another runner (a gateway resuming it, see gateway/data_rights.py) finished it first
            done = {"deletion_id": begun["deletion_id"], "finished_ms": begun["started_ms"]}
        await self._do(ERASURE, REGISTRY, COMPACT, {"forget": user})
        return Receipt(done["deletion_id"], begun["started_ms"], done["finished_ms"], anonymised, deleted, erased,
                       events)

    async def _pipeline(self, user: str):
        """Step 6, retried like a command: waiting for the consumer, or a WAL in use, is retryable."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + RETRY_S, 0.02
        while True:
            try:
                return await self.pipeline.forget(user, ANONYMOUS, step=self._step)
            except SyncopateError as err:
                if not err.retryable or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)          # backoff between retries, not a synchronisation
            delay = min(delay * 2, 1.0)
