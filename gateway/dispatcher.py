"""The gateway's end of the host channel: route each command to its owning host, batch, correlate.

    request(cmd, callback) -> placement.owner(cmd.key) -> Batcher (one message per host per turn)
    receive(host, incarnation, items) <- the host's ordered stream of typed items (protocols/wire.py):
        ("r", token, Reply) -> the request's callback;  Push -> on_push;  Gap -> on_gap

Replies and pushes from one host arrive on one ordered stream, so a subscriber never sees a push
older than the state its subscribe answer carried. Callbacks run synchronously while the stream is
read (not as future continuations), so what a reply sets up (a subscription) is in place before
the very next push of the same batch is routed.

A host that dies takes its unanswered requests with it. The liveness loop pings every host; a
failed ping, or a new incarnation, fails the requests that were sent to the old one with
HOST_UNAVAILABLE. Clients retry those with the same op id: idempotent on the host.

With a membership view (gateway/cluster_view.py) placement follows the view, and the dispatcher
is the failure detector and the retrier (the "failover" methods below):
  * a stream that breaks is probed at once with one short ping; a host whose probe fails, or whose
    periodic pings time out SUSPECT_AFTER times running with nothing heard from it meanwhile, is
    removed from the view (its lease revoked), so its entities go to the live hosts while Ray is
    still deciding the node is dead. The ping timeout adapts to the answers seen, and a late
    answer or any frame on the stream is proof of life (gateway/liveness.py): a live host starved
    on a loaded machine is slow, not removed;
  * a request refused NOT_OWNER (not run: placed elsewhere) is sent again to the owner, and one
    lost with its host (or refused HOST_UNAVAILABLE) is sent again if it has an op id (a retry of
    an op that did commit is answered from the log, never applied twice): with backoff, until
    RETRY_WINDOW_S after it was first sent, so a client sees the failover as latency.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from actors.batching import Batcher
from actors.entity import Command
from actors.membership import Routes
from gateway.liveness import MIN_TIMEOUT_S, Liveness
from protocols.errors import ErrorCode, SyncopateError
from protocols.wire import Gap, Push, Reply, Transport

log = logging.getLogger("syncopate.dispatcher")
Callback = Callable[[Reply], None]


RETRY_WINDOW_S = 10.0      # a request is re-sent (moved, or its host lost) until this long after it was first sent
RETRY_BACKOFF_S = (0.01, 0.1)
SUSPECT_AFTER = 2          # periodic pings that time out, running, with the host silent, before it is removed
PROBE_TIMEOUT_S = MIN_TIMEOUT_S   # a ping's timeout with a view, before answers adapt it (gateway/liveness.py)
PING_ABANDON_S = 5.0       # a ping unanswered this long is given up (a new one is sent)


@dataclass
class _Pending:
    host: int
    callback: Callback
    deadline: float
    cmd: Command | None = None
    retry_until: float = 0.0
    attempts: int = 0
    sent: float = 0.0               # monotonic: first sent


class Dispatcher:
    def __init__(self, gateway_id: str, transport: Transport, on_push: Callable[[Push], None], *,
                 timeout_s: float = 15.0, on_host_restart: Callable[[int], None] | None = None,
                 on_gap: Callable[[Gap], None] | None = None, cluster=None) -> None:
        self.gateway_id = gateway_id
        self.transport = transport
        self.on_push = on_push
        self.on_gap = on_gap or (lambda gap: None)
        self.on_host_restart = on_host_restart or (lambda host: None)
        # sees every host reply, with its command and when it was first sent (gateway/device_liveness.py)
        self.on_reply: Callable[[Command, Reply, float], None] | None = None
        self.timeout_s = timeout_s
        self._tokens = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._incarnations: dict[int, str] = {}
        self._out = Batcher(self._send)
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.sent = 0
        self.received = 0
        self.cluster = cluster                      # gateway.cluster_view.ClusterView, or None: fixed slots
        self.liveness = Liveness()                  # the failure detector's evidence, per host
        self._routes = Routes()                     # key -> host slot, for the current view
        self._pings: dict[int, tuple[float, asyncio.Future]] = {}   # the ping in flight per host: (sent, answer)
        self._probing: set[int] = set()
        self.retries = 0

    def host_of(self, key: str) -> int:
        return self._routes.owner(key, self.cluster.view if self.cluster is not None else None, self.transport.n_hosts)

    def hosts(self) -> list[int]:
        """The host slots to watch: the view's live ones (or the fixed slots)."""
        if self.cluster is not None and self.cluster.view.members:
            return list(self.cluster.view.slots)
        return list(range(self.transport.n_hosts))

    # -- outbound ----------------------------------------------------------------------------
    def request(self, cmd: Command, callback: Callback) -> int:
        token = next(self._tokens)
        host = self.host_of(cmd.key)
        now = time.monotonic()
        self._pending[token] = _Pending(host, callback, now + self.timeout_s, cmd, now + RETRY_WINDOW_S, 0, now)
        self._out.add(host, [(token, cmd)])
        self.sent += 1
        return token

    async def call(self, cmd: Command) -> tuple[Any, int]:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        def callback(reply: Reply) -> None:
            if not fut.done():
                fut.set_result((reply.payload, reply.version)) if reply.ok else fut.set_exception(reply.error)

        self.request(cmd, callback)
        return await fut

    def _send(self, host: int, requests: list) -> None:
        try:
            aw = self.transport.send(host, requests)
        except Exception as exc:
            self._fail_tokens([t for t, _ in requests], exc)
            return
        if aw is not None:
            task = asyncio.ensure_future(aw)
            task.add_done_callback(lambda t, toks=[tok for tok, _ in requests]: self._sent(t, toks))

    def _sent(self, task: asyncio.Future, tokens: list[int]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail_tokens(tokens, exc)

    def _fail_tokens(self, tokens: list[int], exc: BaseException) -> None:
        err = exc if isinstance(exc, SyncopateError) else SyncopateError(
            ErrorCode.HOST_UNAVAILABLE, f"host unreachable ({type(exc).__name__}); retry with the same op_id")
        for t in tokens:
            p = self._pending.pop(t, None)
            if p is not None and not self._retry(p, err):
                p.callback(Reply.fail(err))

    # -- inbound -----------------------------------------------------------------------------
    def receive(self, host: int, incarnation: str, items: list) -> None:
        self.liveness.heard(host)
        known = self._incarnations.get(host)
        restarted = known is not None and known != incarnation
        self._incarnations[host] = incarnation
        for item in items:
            self.received += 1
            try:
                if isinstance(item, Push):
                    self.on_push(item)
                elif isinstance(item, Gap):
                    self.on_gap(item)
                else:
                    _, token, reply = item
                    p = self._pending.pop(token, None)
                    if p is not None and not (reply.error is not None and self._retry(p, reply.error, ran=False)):
                        p.callback(reply)
                        if self.on_reply is not None and p.cmd is not None:
                            # after the callback: an observer's failure never costs a request its answer;
                            # still in this turn, before the next item of the stream is routed
                            self.on_reply(p.cmd, reply, p.sent)
            except Exception:
                # one bad callback must not stop the rest of the host's frame from being routed
                log.exception("routing a host item failed")
        if restarted:
            # Only subscriptions need redoing here: what was sent to the old incarnation was failed
            # when its stream closed (host_lost); what is pending now went to the new one.
            log.warning("host %d restarted", host)
            self.on_host_restart(host)

    def host_lost(self, host: int) -> None:
        """The way to `host` broke (its stream closed, the process died): what was sent on it will
        never be answered. Fail it now, retryable, rather than at the deadline."""
        lost = [t for t, p in self._pending.items() if p.host == host]
        self._fail_tokens(lost, SyncopateError(ErrorCode.HOST_UNAVAILABLE,
                                               "the host went away; retry with the same op_id"))
        self._probe(host)

    def host_restarted(self, host: int) -> None:
        """Same host process, new stream: nothing pending survived, and interest must be redone."""
        self.host_lost(host)
        self.on_host_restart(host)

    # -- liveness and deadlines ------------------------------------------------------------------
    async def start(self, ping_every_s: float = 1.0) -> None:
        if self.cluster is not None:
            ping_every_s = min(ping_every_s, 0.3)     # the failure detector: node loss in seconds
        self._tasks.append(asyncio.create_task(self._liveness(ping_every_s)))

    async def stop(self) -> None:
        self._stopping = True
        for _, fut in self._pings.values():
            fut.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_tokens(list(self._pending), SyncopateError(ErrorCode.HOST_UNAVAILABLE, "gateway stopping"))

    async def check_hosts(self, timeout_s: float = 3.0) -> bool:
        """Ping every host at once, each with a short timeout; True when all answer. Detects
        restarts between deliveries. One host that is gone costs `timeout_s`, not a turn each."""
        results = await asyncio.gather(*(self._check_host(h, timeout_s) for h in self.hosts()))
        return all(results)

    async def _check_host(self, host: int, timeout_s: float) -> bool:
        before = next(self._tokens)         # requests sent after this went to whoever answers the ping
        if self.cluster is not None:
            timeout_s = self.liveness.timeout(host)
        started = time.monotonic()
        ping = self._ping(host)
        # asyncio.wait, not a timeout around the await: the ping outlives this round, and its late
        # answer still counts as the host alive (and as a round-trip sample).
        await asyncio.wait({ping}, timeout=timeout_s)
        if not ping.done():
            # slow is not dead (a loaded machine, a GC pause): what it owes keeps its deadline.
            # With a view, SUSPECT_AFTER of these in a row, the host silent all along, remove it
            # (leases make that safe).
            log.warning("host %d did not answer its ping in %.2f s", host, timeout_s)
            self._missed(host, self.liveness.timed_out(host, started))
            return False
        exc = ping.exception() if not ping.cancelled() else TimeoutError()
        if exc is not None:
            err = exc if isinstance(exc, SyncopateError) else SyncopateError(
                ErrorCode.HOST_UNAVAILABLE, f"host {host} did not answer its ping; retry with the same op_id")
            self._fail_tokens([t for t, p in self._pending.items() if p.host == host and t < before], err)
            # Keep the last incarnation known: the next good ping must see the restart.
            self._missed(host, self.liveness.failed(host, SUSPECT_AFTER))
            return False
        inc = ping.result()
        known = self._incarnations.get(host)
        if known is None:
            self._incarnations[host] = inc
        elif known != inc:
            self._incarnations[host] = inc
            lost = [t for t, p in self._pending.items() if p.host == host and t < before]
            self._fail_tokens(lost, SyncopateError(ErrorCode.HOST_UNAVAILABLE,
                                                   "the host restarted; retry with the same op_id"))
            self.on_host_restart(host)
        return True

    async def _liveness(self, every: float) -> None:
        while not self._stopping:
            await asyncio.sleep(every)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
                # that stop() sends, and the loop would outlive its gateway.
                async with asyncio.timeout(max(every * 5, 5.0)):
                    await self.check_hosts()
            except TimeoutError:
                log.warning("liveness check timed out")
            except Exception as exc:
                log.warning("liveness check failed: %s", exc)
            now = time.monotonic()
            expired = [t for t, p in self._pending.items() if p.deadline < now]
            self._fail_tokens(expired, SyncopateError(ErrorCode.TIMEOUT, "no answer from the host in time; retry"))

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- failover (with a membership view) ---------------------------------------------------------
    def _retry(self, p: _Pending, err: SyncopateError, ran: bool | None = None) -> bool:
        """Send `p` again later, to whoever owns it then; False: not retried (answer the error).
        `ran=False`: the host answered that it did not run it (NOT_OWNER, HOST_UNAVAILABLE: no
        lease, evicted before commit); None: unknown (lost with its host), so only with an op id."""
        if self.cluster is None or p.cmd is None or self._stopping or time.monotonic() >= p.retry_until:
            return False
        if err.code == ErrorCode.NOT_OWNER:
            self.cluster.poke()                       # that host's view is newer than ours
        elif err.code != ErrorCode.HOST_UNAVAILABLE or (p.cmd.op_id is None and ran is not False):
            return False                              # it may have run: without an op id it might run twice
        delay = min(RETRY_BACKOFF_S[0] * 2 ** p.attempts, RETRY_BACKOFF_S[1])
        p.attempts += 1
        self.retries += 1
        asyncio.get_running_loop().call_later(delay, self._resend, p, err)
        return True

    def _resend(self, p: _Pending, err: SyncopateError) -> None:
        host = self.host_of(p.cmd.key)
        connected = getattr(self.transport, "connected", None)
        if self._stopping or (connected is not None and not connected(host)):
            # Still placed on a host we can't reach: wait for the view to move it (or the stream).
            if not self._retry(p, err, ran=False):     # not sent again yet: it did not run since
                p.callback(Reply.fail(err))
            return
        token = next(self._tokens)
        p.host = host
        self._pending[token] = p
        self._out.add(host, [(token, p.cmd)])

    def _ping(self, host: int) -> asyncio.Future:
        """The ping in flight to `host`, or a new one (one at a time per host; one unanswered for
        PING_ABANDON_S is given up). Every answer, in time or late, is evidence (gateway/liveness.py)."""
        now = time.monotonic()
        sent, fut = self._pings.get(host, (0.0, None))
        if fut is not None and not fut.done() and now - sent < PING_ABANDON_S:
            return fut
        if fut is not None:
            fut.cancel()
        fut = asyncio.ensure_future(self.transport.ping(host))
        self._pings[host] = (now, fut)

        def answered(f: asyncio.Future, sent: float = now) -> None:
            if not f.cancelled() and f.exception() is None:     # (an exception is read, never left unretrieved)
                self.liveness.answered(host, sent)

        fut.add_done_callback(answered)
        return fut

    def _missed(self, host: int, misses: int) -> None:
        if self.cluster is not None and misses >= SUSPECT_AFTER:
            self._remove(host)

    def _probe(self, host: int) -> None:
        """Its stream broke: one short ping decides (a live host answers, and the stream re-opens)."""
        if self.cluster is None or self._stopping or host in self._probing:
            return
        self._probing.add(host)

        async def run() -> None:
            try:
                ping = self._ping(host)
                await asyncio.wait({ping}, timeout=self.liveness.timeout(host))
                if ping.done() and not ping.cancelled() and ping.exception() is None:
                    return
                why = "TimeoutError" if not ping.done() or ping.cancelled() else type(ping.exception()).__name__
                log.warning("host %d: stream lost and no answer to a ping (%s): removing it", host, why)
                await self._removal(host)
            finally:
                self._probing.discard(host)

        self._tasks.append(asyncio.ensure_future(run()))
        self._tasks = [t for t in self._tasks if not t.done()]

    def _remove(self, host: int) -> None:
        self._tasks.append(asyncio.ensure_future(self._removal(host)))

    async def _removal(self, host: int) -> None:
        # The evidence was about the process judged: a slot that rejoins starts afresh (a ping
        # still in flight to the dead one must not be taken as the new one's answer).
        self.liveness.forget(host)
        _, ping = self._pings.pop(host, (0.0, None))
        if ping is not None:
            ping.cancel()
        try:
            await self.cluster.remove(host, self._incarnations.get(host))
        except Exception as exc:
            log.warning("removing host %d from the view failed: %s", host, exc)
