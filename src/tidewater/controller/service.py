"""The controller's driver: the one module that awaits, reads the clock and does I/O.

It owns the store, the connections (by id) and the task group, and for each
decoded frame does three things, in this order and with no await between
the second and the third::

    reads = await <the store reads the request names>       # only where needed
    effects = state.<handler>(..., reads, now)              # pure: ControllerState
    store.write(effects.writes, on_commit=<effects.after>)  # then deliver

Frames in ``effects.out`` go at once; ``effects.after`` goes back to
:meth:`ControllerState.committed` from the store's commit callback, so
nothing is announced before it is stored, and announcements follow commit
order. Event ids are allocated in memory and their writes queued before the
next await; the store commits in queue order, so once a write is committed
so is every event id allocated before it was queued (the watermark a new
watch starts from).

Three loops run beside the connections: dispatch (woken when a task is
queued or credit granted), leases (sleeps until the next pilot lease runs
out) and token expiry (every heartbeat interval).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus

from .. import proto as P
from ..config import ControllerConfig
from ..errors import InvalidRequest
from ..states import TaskState as S
from . import admin, auth, lifecycle, requests
from .effects import After, Close, Effects, Send
from .metrics import ControllerMetrics
from .model import LiveTask, Principal, TokenRow, UserRow
from .pilots import PilotRec
from .state import ControllerState, NeedsRead, Stored
from .store.base import Store
from .store.open import open_store

log = logging.getLogger("tidewater.controller")

R = TypeVar("R")

MAX_READ_ROUNDS = 5
"""Reads retried when tasks left memory meanwhile; then the client is asked to retry."""


class Peer(Protocol):
    """A connected websocket as the driver sees it."""

    id: int

    def send(self, msg: P.Msg) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


@dataclass
class _TokenRead:
    """One read of a token's row and its user's, shared by whoever asks meanwhile."""

    done: anyio.Event = field(default_factory=anyio.Event)
    rows: tuple[TokenRow | None, UserRow | None] | None = None
    """None once done: the read failed or was cancelled."""


class ControllerService:
    """The store, the pure state, the connections and the loops.

    Use as ``await tg.start(service.run)``; the transport (:mod:`.app`) then
    calls the ``on_*`` methods for each connection and decoded frame.
    """

    def __init__(self, config: ControllerConfig, store: Store | None = None) -> None:
        self.config = config
        self.t = config.timeouts
        self.limits = config.limits
        self.server_id = uuid.uuid4().hex
        self.store: Store = store if store is not None else open_store(
            config.db or ":memory:", queue_size=config.limits.write_queue)
        self.state = ControllerState(config)
        self.peers: dict[int, Peer] = {}
        self._wake = anyio.Event()
        self._lease_changed = anyio.Event()
        self.started_at = time.time()
        self.deposed = False
        """Set by :meth:`abandon`: this controller may no longer write (or announce) anything."""
        self.dispatching = True
        """Cleared while shutting down: ready tasks wait for the next controller."""
        self._token_reads: dict[str, _TokenRead] = {}
        self.metrics = ControllerMetrics(
            self.state, store_counts=lambda: (self.store.batches, self.store.ops_committed),
            started_at=self.started_at)
        self.store.on_batch = self.metrics.store_batch

    def abandon(self) -> int:
        """Write and announce nothing more: drop the writes not yet committed; how many.

        For a controller that lost the leader's lock: another may own the
        store now. Effects produced later (a connection's end, a lease) are
        dropped too, so nothing is acknowledged that this store will not hold.
        """
        self.deposed = True
        return self.store.abandon()

    # ================================================================== life

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, load what it holds, run the loops until cancelled."""
        async with self.store:
            self.store.after_batch = self._flush
            recovered = await self.store.recover()
            self._execute(self.state.load(recovered, time.time()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._dispatch_loop)
                tg.start_soon(self._lease_loop)
                tg.start_soon(self._expiry_loop)
                task_status.started()
                await anyio.sleep_forever()

    # ================================================================== executing effects

    def _execute(self, fx: Effects) -> None:
        """Deliver ``out`` now; queue the writes with what follows them. Never awaits."""
        if self.deposed:
            return
        for o in fx.out:
            self._deliver(o)
        if fx.writes or fx.after:
            self.store.write_nowait(fx.writes, partial(self._committed, fx.after,
                                                       self.state.tasks.next_event - 1))
        if fx.wake:
            self._wake.set()

    async def _run(self, fx: Effects) -> None:
        """As :meth:`_execute`, then wait while the store's queue is over its bound."""
        if self.deposed:
            return
        for o in fx.out:
            self._deliver(o)
        if fx.writes or fx.after:
            await self.store.write(fx.writes, partial(self._committed, fx.after,
                                                      self.state.tasks.next_event - 1))
        if fx.wake:
            self._wake.set()

    def _committed(self, after: list[After], mark: int) -> None:
        notify = self.state.notify
        notify.committed_event = max(notify.committed_event, mark)
        if after:
            self._execute(self.state.committed(after, time.time()))

    def _flush(self) -> None:
        """After each committed batch: dispatch what it made runnable, then notify.

        Dispatching here rather than in the dispatch loop sends a task that
        just became runnable in the same turn of the event loop as its
        commit, one hop sooner (the loop still runs for other wake-ups).
        """
        if self._wake.is_set() and self.dispatching and not self.deposed:
            # The event stays set: the loop's own round then finds nothing left.
            self._execute(self.state.dispatch(time.time()))
        for o in self.state.flush():
            self._deliver(o)

    def _deliver(self, o: Send | Close) -> None:
        peer = self.peers.get(o.peer)
        if peer is None:
            return
        if isinstance(o, Send):
            peer.send(o.msg)
        else:
            peer.close(o.code, o.reason)

    # ================================================================== connections

    def connected(self, who: Principal, peer: Peer) -> None:
        self.peers[peer.id] = peer
        self.state.tokens.attach(who, peer.id)

    def disconnected(self, who: Principal, peer: Peer) -> None:
        self.state.tokens.detach(who, peer.id)
        self.peers.pop(peer.id, None)

    async def authenticate(self, token: str, remote: str = "") -> Principal:
        """The owner of a token. Raises InvalidRequest (code "auth") saying why not."""
        tokens = self.state.tokens
        parsed = tokens.parse(token)
        if parsed.legacy:
            row = await self.store.legacy_token(auth.legacy_hash(token))
            user = await self.store.user(row.user_id) if row is not None else None
        else:
            row, user = await self._token_rows(parsed.id)
        return tokens.principal(
            parsed, token, row, user, now=time.time(), remote=remote,
            site_exists=lambda sid: sid in self.state.registry.sites,
            job_of=self.state.jobs.jobs.get)

    async def _token_rows(self, token_id: str) -> tuple[TokenRow | None, UserRow | None]:
        """The token's row and its user's; a read already under way for it is shared.

        After a controller restart every pilot of a batch job presents the same
        token within a second or two: read one by one, their identical reads
        queue on the store's single reader, and the first Welcome waits for
        thousands of them. A caller that arrives during a read gets that read's
        rows, as if it had arrived a moment earlier; each caller still has its
        own secret checked against them. If the read fails or is cancelled,
        those waiting read for themselves. Cancel-safe.
        """
        flight = self._token_reads.get(token_id)
        if flight is not None:
            await flight.done.wait()
            if flight.rows is not None:
                return flight.rows
            row = await self.store.token(token_id)
            return row, await self.store.user(row.user_id) if row is not None else None
        flight = self._token_reads[token_id] = _TokenRead()
        try:
            row = await self.store.token(token_id)
            user = await self.store.user(row.user_id) if row is not None else None
            flight.rows = (row, user)
            return flight.rows
        finally:
            del self._token_reads[token_id]
            flight.done.set()

    # ================================================================== reads

    async def _with_tasks(self, who: Principal, ids: list[int],
                          handler: Callable[[Stored], R]) -> R:
        """Call ``handler`` with ``who``'s tasks among ``ids`` that are not in memory."""
        stored = Stored()
        for _ in range(MAX_READ_ROUNDS):
            missing = [i for i in self.state.unread(who, ids) if i not in stored.read]
            if missing:
                for t in await self.store.tasks(who.user_id, missing):
                    stored.tasks[t.id] = t
                stored.read.update(missing)
            try:
                return handler(stored)
            except NeedsRead:
                continue
        raise InvalidRequest("tasks changed state during the request; try again", "retry")

    # ================================================================== clients

    async def on_client(self, who: Principal, peer: Peer, msg: P.Msg) -> None:
        """Handle one client frame. Raises InvalidRequest (sent back as Error by the app)."""
        st, pid = self.state, peer.id
        match msg:
            case P.Submit():
                await self._submit(who, peer, msg)
            case P.Wait():
                await self._wait(who, peer, msg)
            case P.Cancel():
                await self._run(await self._with_tasks(
                    who, msg.ids, lambda s: requests.cancel(st, who, pid, msg, s, time.time())))
            case P.Query():
                q = requests.task_query(st, who, msg.filter)
                rows = await self.store.query(q, after_id=msg.after_id,
                                              limit=requests.query_limit(st, msg), newest=msg.newest)
                await self._run(requests.query_reply(st, pid, msg, rows))
            case P.CountTasks():
                peer.send(await self.count(who, msg.filter, req_id=msg.req_id))
            case P.ListPhases():
                q = requests.task_query(st, who, msg.filter)
                limit = requests.phases_limit(st, msg)
                rows = await self.store.query(q, after_id=msg.after_id, limit=limit,
                                              newest=False)
                events = await self.store.events_of(
                    [t.id for t in requests.phases_window(msg, rows)])
                await self._run(requests.phases_reply(st, pid, msg, rows, events, limit))
            case P.Watch():
                await self._watch(who, peer, msg)
            case P.Unwatch():
                st.notify.unwatch(who.user_id, pid, msg.watch_id)
                peer.send(P.Done(req_id=msg.req_id))
            case P.Download():
                await self._download(who, peer, msg)
            case P.Retry():
                await self._retry(who, peer, msg)
            case P.Resubmit():
                await self._resubmit(who, peer, msg)
            case P.ListEvents():
                await self._list_events(who, peer, msg)
            case P.ReadLog():
                t = await self._with_tasks(who, [msg.task_id], lambda s: self._one_task(
                    who, msg.task_id, s))
                self._execute(lifecycle.read_log(st, pid, msg, t))
            case P.Ping():
                peer.send(P.Ping(time=msg.time))
            case P.Hello():
                raise InvalidRequest("already greeted: Hello is only the first frame")
            case _:
                await self._run(await self._admin(who, pid, msg, time.time()))

    async def count(self, who: Principal, f: P.TaskFilter, *, req_id: int = 0) -> P.TaskCounts:
        """How many of ``who``'s tasks match ``f``, by state and by site (committed state).

        Raises InvalidRequest (an unknown state) or NotFound (an unknown site).
        Its cost is the matching tasks (see ``store.reads.count_sql``).
        """
        rows = await self.store.count(requests.task_query(self.state, who, f))
        return requests.counts(self.state, req_id, rows)

    async def _admin(self, who: Principal, pid: int, msg: P.Msg, now: float) -> Effects:
        """Sites, apps, batch jobs, tokens and users: the reads each needs, then its handler."""
        st, store, tokens = self.state, self.store, self.state.tokens
        match msg:
            case P.AddSite():
                return admin.add_site(st, who, pid, msg, now)
            case P.ListSites():
                return admin.list_sites(st, who, pid, msg, now)
            case P.AddApp():
                return admin.add_app(st, who, pid, msg, now)
            case P.ListApps():
                return admin.list_apps(st, who, pid, msg)
            case P.AddJob():
                return admin.add_job(st, who, pid, msg, now)
            case P.ListJobs():
                return admin.list_jobs(st, who, pid, msg, now)
            case P.CancelJob():
                return st.jobs.cancel_job(who, pid, msg, now)
            case P.CreateToken():
                live = await store.live_token_ids(who.user_id)
                return admin.create_token(st, who, pid, msg, len(live), time.time())
            case P.ListTokens():
                rows = await store.tokens_of(who.user_id, include_revoked=msg.include_revoked,
                                             limit=10_000)
                return admin.list_tokens(st, who, pid, msg, rows)
            case P.RevokeToken():
                row = await store.token(msg.id)
                return tokens.revoke(who, pid, msg, row, time.time())
            case P.AddUser():
                existing = await store.user_by_name(msg.name)
                next_uid = await store.next_user_id()
                return tokens.add_user(who, pid, msg, existing, next_uid, time.time())
            case P.RemoveUser():
                user = await store.user_by_name(msg.name)
                ids = await store.live_token_ids(user.id) if user is not None else []
                return tokens.remove_user(who, pid, msg, user, ids, time.time())
            case P.ListUsers():
                return tokens.list_users(who, pid, msg, await store.users())
            case P.ListAudit():
                whose, limit = tokens.audit_scope(who, msg)
                return tokens.list_audit(who, pid, msg, await store.audit(whose, limit))
        raise InvalidRequest(f"unexpected {type(msg).__name__} from a client")

    async def _wait(self, who: Principal, peer: Peer, msg: P.Wait) -> None:
        stored = Stored()
        ids = msg.ids
        while ids:
            # Each round answers what it can; ids that finished while the store was
            # read are final by the next round's read, so this ends.
            missing = [i for i in self.state.unread(who, ids) if i not in stored.read]
            if missing:
                for t in await self.store.tasks(who.user_id, missing):
                    stored.tasks[t.id] = t
                stored.read.update(missing)
            fx, ids = requests.wait(self.state, who, peer.id,
                                    msgspec.structs.replace(msg, ids=ids), stored)
            await self._run(fx)

    async def _submit(self, who: Principal, peer: Peer, msg: P.Submit) -> None:
        st = self.state
        if msg.key:
            prior = st.tasks.prior_submission(who.user_id, msg.key)
            if prior is None and msg.resend:
                prior = await self.store.prior_submission(who.user_id, msg.key)
            if prior is not None:
                ids = list(range(prior[0], prior[0] + prior[1]))
                # Answered once everything queued so far is committed.
                await self._run(Effects(after=[Send(peer.id, P.Submitted(req_id=msg.req_id,
                                                                         ids=ids))]))
                if msg.wait:  # a resent submit-and-wait: wait for them now
                    await self._wait(who, peer, P.Wait(req_id=msg.req_id, ids=ids))
                return
        stored = Stored()  # what is read stays read: a parent that finished is final
        for _ in range(MAX_READ_ROUNDS):
            plan = requests.plan_submit(st, who, msg, time.time())
            unread = [p for p in plan.unread_parents if p not in stored.read]
            if unread:
                stored.states.update(await self.store.task_states(who.user_id, unread))
                stored.read.update(unread)
            for parent, output in plan.unread_outputs:
                if (parent, output) in stored.outputs:
                    continue
                if parent not in stored.tasks:
                    for t in await self.store.tasks(who.user_id, [parent]):
                        stored.tasks[t.id] = t
                stored.outputs[(parent, output)] = await self.store.output_data(parent, output)
            try:
                fx = requests.submit(st, who, peer.id, msg, plan, stored, time.time())
            except NeedsRead:
                continue
            await self._run(fx)
            return
        raise InvalidRequest("parents changed state during the submit; try again", "retry")

    async def _watch(self, who: Principal, peer: Peer, msg: P.Watch) -> None:
        st = self.state
        q = requests.task_query(st, who, msg.filter) if msg.since_event else None
        sub, fx = await self._with_tasks(who, msg.filter.ids,
                                         lambda s: requests.watch(st, who, peer.id, msg, s))
        self._execute(fx)
        if q is None:
            return
        events = []
        try:
            events = await self.store.events_since(q, msg.since_event, 100_000)
        finally:
            for o in st.notify.replayed(sub, msg.since_event, events):
                self._deliver(o)

    async def _download(self, who: Principal, peer: Peer, msg: P.Download) -> None:
        st = self.state

        async def read(stored: Stored) -> None:
            if msg.task_id in stored.tasks:
                stored.outputs[(msg.task_id, msg.path.strip("/"))] = (
                    await self.store.output_data(msg.task_id, msg.path.strip("/")))

        stored = Stored()
        for _ in range(MAX_READ_ROUNDS):
            if st.unread(who, [msg.task_id]) and msg.task_id not in stored.read:
                for t in await self.store.tasks(who.user_id, [msg.task_id]):
                    stored.tasks[t.id] = t
                stored.read.add(msg.task_id)
                await read(stored)
            try:
                fx = requests.download(st, who, peer.id, msg, stored)
            except NeedsRead:
                continue
            self._execute(fx)
            return
        raise InvalidRequest("the task changed state during the request; try again", "retry")

    def _one_task(self, who: Principal, task_id: int, stored: Stored) -> LiveTask:
        """``who``'s task, live or stored. Raises NotFound, or NeedsRead if it left memory."""
        live, final, left = self.state.owned(who, [task_id], stored)
        if left:
            raise NeedsRead(left)
        return live.get(task_id) or final[task_id]

    async def _retry(self, who: Principal, peer: Peer, msg: P.Retry) -> None:
        """Read the FAILED tasks named or matched, their failed descendants and what
        the handler needs of them (:class:`.lifecycle.RetryRead`); then retry."""
        st, store, read = self.state, self.store, lifecycle.RetryRead()
        if msg.ids and msg.filter is not None:
            raise InvalidRequest("retry: give task ids or a filter, not both")
        if msg.ids:
            read.roots = lifecycle.check_retry_ids(st, who, list(msg.ids), await store.tasks(
                who.user_id, list(dict.fromkeys(msg.ids))))
        elif (found := lifecycle.retry_query(st, who, msg)) is not None:
            q, limit = found
            read.roots = await store.query(q, after_id=msg.after_id, limit=limit + 1,
                                           newest=False)
            read.more = len(read.roots) > limit
            del read.roots[limit:]
        chosen = {t.id for t in read.roots if t.state == S.FAILED}
        frontier = sorted(chosen)
        while frontier and len(chosen) < lifecycle.MAX_CASCADE:
            kids = sorted({c for c, _p in await store.children_of(frontier)} - chosen)
            found_kids = [t for t in await store.tasks(who.user_id, kids)
                          if lifecycle.parent_failure(t) in chosen]
            read.children += found_kids
            frontier = [t.id for t in found_kids]
            chosen.update(frontier)
        tasks = [*read.roots, *read.children]
        parents = {p for t in tasks for p in t.parent_ids or ()} - chosen
        read.states = await store.task_states(who.user_id, sorted(parents))
        for tid, direction, path, data in await store.inline_data(sorted(chosen)):
            if direction == "in":
                read.inline.setdefault(tid, {})[path] = data
        await self._run(lifecycle.retry(st, who, peer.id, msg, read, time.time()))

    async def _resubmit(self, who: Principal, peer: Peer, msg: P.Resubmit) -> None:
        ids = list(dict.fromkeys(msg.ids))
        tasks = await self.store.tasks(who.user_id, ids)
        inline: dict[int, dict[str, bytes]] = {}
        for tid, direction, path, data in await self.store.inline_data(ids):
            if direction == "in":
                inline.setdefault(tid, {})[path] = data
        await self._submit(who, peer, lifecycle.resubmit_msg(self.state, who, msg, tasks, inline))

    async def _list_events(self, who: Principal, peer: Peer, msg: P.ListEvents) -> None:
        st = self.state
        if msg.filter.ids:  # another user's ids are not found, as for a watch
            await self._with_tasks(who, msg.filter.ids,
                                   lambda s: st.owned(who, msg.filter.ids, s))
        q, limit, upto = lifecycle.events_request(st, who, msg)
        rows = await self.store.events_since(q, msg.since_event, limit, upto=upto)
        events = [P.TaskEvent(id=e.id, task_id=e.task_id, from_state=e.src, to_state=e.dst,
                              time=e.time, data=e.data, tags=e.tags) for e in rows]
        self._execute(lifecycle.events_reply(st, peer.id, msg, events, limit, upto))

    def on_client_gone(self, who: Principal, peer: Peer) -> None:
        self.state.notify.client_gone(who.user_id, peer.id)

    # ================================================================== pilots

    def on_pilot_hello(self, who: Principal, peer: Peer, hello: P.Hello,
                       welcome: P.Welcome) -> PilotRec:
        """Welcome and reconcile a pilot. Raises InvalidRequest (nothing sent) if refused."""
        rec, fx = self.state.pilot_hello(who, peer.id, hello, welcome, time.time())
        self._execute(fx)
        self._lease_changed.set()
        return rec

    async def on_pilot(self, rec: PilotRec, msg: P.Msg) -> None:
        st = self.state
        match msg:
            case P.Reports():
                await self._run(st.reports(rec, msg, time.time()))
            case P.Credit():
                self._execute(st.credit(rec, msg))
            case P.Heartbeat():
                self._execute(st.heartbeat(rec, time.time()))
            case P.Drain():
                self._execute(st.drain(rec, msg.reason))

    def on_pilot_gone(self, rec: PilotRec, peer: Peer, *, bye: bool) -> None:
        self._execute(self.state.pilot_gone(rec, peer.id, bye=bye, now=time.time()))
        self._lease_changed.set()  # its lease may now end sooner (the disconnect grace)

    # ================================================================== agents

    async def on_agent_hello(self, who: Principal, peer: Peer, hello: P.Hello,
                             welcome: P.Welcome) -> int:
        """Welcome a site's agent; its site id. Raises InvalidRequest if refused."""
        site_id, fx = admin.agent_hello(self.state, who, peer.id, hello, welcome, time.time())
        await self._run(fx)
        return site_id

    async def on_agent(self, site_id: int, peer: Peer, msg: P.Msg) -> None:
        st = self.state
        st.jobs.agent_heard(site_id, time.time())
        match msg:
            case P.JobUpdates():
                await self._run(st.jobs.job_updates(site_id, peer.id, msg, time.time()))
            case P.RequestJob():
                await self._run(admin.request_job(st, site_id, peer.id, msg, time.time()))
            case P.Staged():
                await self._run(st.staged(site_id, peer.id, msg, time.time()))
            case P.FileChunk():
                for o in st.staging.file_chunk(msg):
                    self._deliver(o)
            case P.Heartbeat() | P.Ping():
                peer.send(P.Ping(time=msg.time))
            case P.Hello():
                raise InvalidRequest("already greeted: Hello is only the first frame")

    def on_agent_gone(self, site_id: int, peer: Peer) -> None:
        self.state.jobs.agent_gone(site_id, peer.id)
        for o in self.state.staging.agent_gone(peer.id):
            self._deliver(o)
        if self.state.routed:
            self._wake.set()  # a routed task's site may be down now: route it again

    # ================================================================== loops

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self.dispatching:
                self._execute(self.state.dispatch(time.time()))

    async def _lease_loop(self) -> None:
        leases = self.state.pilots.leases
        while True:
            deadline = leases.next_deadline()
            with anyio.move_on_after(
                max(0.05, deadline - time.time()) if deadline is not None else 3600
            ):
                await self._lease_changed.wait()
                self._lease_changed = anyio.Event()
                continue
            self._execute(self.state.lease_expired(time.time()))

    async def _expiry_loop(self) -> None:
        """Every heartbeat interval, close connections whose token expired or was revoked.

        Revocation over the websocket closes at once; this also catches a token
        revoked, or a user removed, by the owner at the command line on the store.
        """
        tokens = self.state.tokens
        while True:
            await anyio.sleep(self.t.heartbeat_interval)
            dead = tokens.expired(time.time())
            live = [tid for tid in tokens.live_token_ids() if tid not in dead]
            if live:
                dead.update(await self.store.dead_tokens(live))
            if dead:
                log.info("closing the connections of %d expired or revoked tokens", len(dead))
                for o in tokens.close_sessions(sorted(dead), "token expired or revoked"):
                    self._deliver(o)

    # ================================================================== metrics

    async def render_metrics(self) -> bytes:
        """Every metric in Prometheus text (:mod:`.metrics`), labels named from the store.

        Reads the users (a few rows) for the ``user`` labels; the rest is
        read from memory. Raises StoreError if that read fails.
        """
        self.metrics.user_names = {u.id: u.name for u in await self.store.users()}
        return self.metrics.render()
