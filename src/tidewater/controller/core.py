"""The controller's brain: live tasks, pilots, watchers, and what each message does.

One :class:`Controller` per process. Every state change follows one rule:
update memory at once (so the next message sees it), queue the rows to the
store, and do everything another process can observe -- acknowledgements,
replies, pushed events, work sent to pilots -- in the ``on_commit``
callback, after the store has committed.

Only tasks that are not final live in memory; final ones are read back from
the store. The transport (aiohttp websockets) is in :mod:`.app`; this module
sees connections only through :class:`Peer`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus

from .. import apps as appmod
from .. import codec, states
from .. import proto as P
from ..config import ControllerConfig
from ..errors import AppError, InvalidRequest, LimitExceeded, NotFound, ParamError
from ..states import TaskState as S
from .batchjobs import BatchJobs, check_task_fits
from .dispatch import Dispatcher, PilotSlot
from .leases import Leases
from .model import AppRec, LiveTask, Principal, SiteRec
from .model import Event as Ev
from .staging import Staging, check_files, needs_agent, resolve, task_workdir, workdir_of
from .store import schema
from .store.base import Store, TaskQuery, Write, open_store
from .tokens import Tokens

log = logging.getLogger("tidewater.controller")

_j = schema.json_text


class Peer(Protocol):
    """A connected websocket as the core sees it."""

    id: int

    def send(self, msg: P.Msg) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


@dataclass
class PilotRec:
    pilot_id: str
    site_id: int
    owner_id: int
    hostname: str
    cores: int
    gpus: int
    peer: Peer | None = None
    assigned: set[int] = field(default_factory=set)
    batch_job: int = 0
    node_count: int = 1
    draining: bool = False


Touched = tuple[LiveTask, list[Ev], S]
"""A task, the events of one commit, and the state that commit wrote."""


@dataclass
class WatchSub:
    peer: Peer
    watch_id: int
    filter: P.TaskFilter
    held: list[P.TaskEvent] | None = None  # live events kept back while history replays


class Controller:
    """Owns the store, the dispatcher and the lease clock.

    Use as ``await tg.start(controller.run)``; handlers are then called by
    the transport for each decoded message.
    """

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.t = config.timeouts
        self.limits = config.limits
        self.server_id = uuid.uuid4().hex
        self.store: Store = open_store(config.db or ":memory:",
                                       queue_size=config.limits.write_queue)
        self.live: dict[int, LiveTask] = {}
        self.sites: dict[int, SiteRec] = {}
        self.site_names: dict[tuple[int, str], int] = {}
        self.apps: dict[tuple[int, str], AppRec] = {}
        self.pilots: dict[str, PilotRec] = {}
        self.dispatcher = Dispatcher()
        self.batch = BatchJobs(self)
        self.tokens = Tokens(self)
        self.staging = Staging(self)
        self._demand_dirty: set[int] = set()
        # Live parent -> children waiting for it. A parent's final transition moves
        # its children (READY, or FAILED / KILLED) in the same commit.
        self._children: dict[int, list[int]] = {}
        self._cascade: list[Touched] = []
        self.leases = Leases(config.timeouts.lease_timeout)
        self._watchers: dict[int, dict[tuple[int, int], WatchSub]] = {}
        self._waiters: dict[int, list[tuple[Peer, int]]] = {}
        self._next_task = 1
        self._next_event = 1
        self._committed_event = 0  # every event id up to this one is committed
        self._shared: dict[str, str] = {}
        self._next_site = 1
        self._next_watch = 1
        # Idempotency keys of recent Submits -> (first id, count): one Submit's
        # ids are always consecutive, so a range is all there is to keep.
        self._recent_keys: OrderedDict[tuple[int, str], tuple[int, int]] = OrderedDict()
        # Notifications aggregated over one committed batch, flushed after it.
        self._pending_events: dict[int, tuple[Peer, dict[int, list[P.TaskEvent]]]] = {}
        self._pending_results: dict[tuple[int, int], tuple[Peer, list[P.TaskInfo]]] = {}
        self._wake = anyio.Event()
        self._lease_changed = anyio.Event()
        self._dispatch_hold_until = 0.0
        self.started_at = time.time()
        self.counters: dict[str, int] = {
            "tasks_submitted": 0, "tasks_finished": 0, "tasks_failed": 0,
            "tasks_killed": 0, "tasks_retried": 0, "stale_reports": 0,
        }

    # ================================================================== life

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, recover live tasks, run the dispatcher and lease clock."""
        async with self.store:
            self.store.after_batch = self._flush
            await self._recover()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._dispatch_loop)
                tg.start_soon(self._lease_loop)
                tg.start_soon(self.tokens.expiry_loop)
                task_status.started()
                await anyio.sleep_forever()

    async def _recover(self) -> None:
        rec = await self.store.recover()
        self._next_task = rec.next_task
        self._next_event = rec.next_event
        self._committed_event = self._next_event - 1
        for site in rec.sites:
            self.sites[site.id] = SiteRec(site.id, site.owner_id, site.name, site.created_at)
            self.site_names[(site.owner_id, site.name)] = site.id
            self._next_site = max(self._next_site, site.id + 1)
        for app in rec.apps:
            self.apps[(app.site_id, app.name)] = app
        now = time.time()
        for t in rec.live:
            t.tags_j, t.env_j = self._share(t.tags_j), self._share(t.env_j)
            self.live[t.id] = t
            if t.state == S.RUNNING and t.pilot:
                # Its pilot may still be running it: give it one lease to come back.
                prec = self.pilots.get(t.pilot)
                if prec is None:
                    prec = PilotRec(t.pilot, t.site_id, t.owner_id, "", 0, 0)
                    self.pilots[t.pilot] = prec
                    self.leases.touch(t.pilot, now)
                prec.assigned.add(t.id)
            elif t.state in states.RUNNABLE:
                t.pilot = ""
                self._enqueue(t)
        self._recover_parents(rec.parents, now)
        self.batch.recover(rec)
        if rec.live:
            self._dispatch_hold_until = time.monotonic() + self.t.restart_grace
            log.info("recovered %d live tasks; %d pilots expected back", len(rec.live),
                     len(self.pilots))

    def _recover_parents(self, links: list[tuple[int, int]], now: float) -> None:
        """Rebuild the parent -> children links of tasks still waiting for parents."""
        for child, parent in links:
            p = self.live.get(parent)
            if p is not None and p.state not in states.FINAL:
                self.live[child].waiting += 1
                self._children.setdefault(parent, []).append(child)
        # A parent's finish moves its children in the same commit, so none should be
        # left waiting on nothing; should one be, it goes on now rather than never.
        awaiting = [t.id for t in self.live.values() if t.state == S.AWAITING_PARENTS]
        stmts: list[Write] = []
        touched: list[Touched] = []
        for tid in awaiting:
            t = self.live[tid]
            if t.waiting == 0:
                s, events = self._transition(t, [S.READY, S.STAGED_IN], now)
                stmts.extend(s)
                touched.append((t, events, t.state))
        if stmts:
            self._write_soon(stmts, lambda: self._after_commit(touched))

    # ================================================================== auth

    async def authenticate(self, hello: P.Hello, remote: str = "") -> Principal:
        """Map a Hello's token to its owner. Raises InvalidRequest (code "auth") if refused."""
        return await self.tokens.authenticate(hello.token, remote)

    # ================================================================== helpers

    def _event_rows(
        self, t: LiveTask, path: list[S], now: float, data: dict[str, Any] | None = None
    ) -> tuple[list[Write], list[Ev]]:
        steps = states.check_path(t.state, path)
        stmts: list[Write] = []
        events: list[Ev] = []
        payload = data or {}
        for src, dst in steps:
            eid = self._next_event
            self._next_event += 1
            ev = Ev(eid, src.value, dst.value, now, payload)
            stmts.append(schema.insert_event(t.id, ev))
            events.append(ev)
        t.state = path[-1]
        if t.state in states.FINAL and t.id in self._children:
            stmts.extend(self._release_children(t, now))
        return stmts, events

    def _release_children(self, t: LiveTask, now: float) -> list[Write]:
        """A parent reached a final state: move its waiting children in the same commit.

        Finished: a child whose last parent this was becomes READY. Failed or
        killed: every waiting child fails or is killed, naming the parent, and
        so on down (the child's own final transition comes back here).
        """
        out: list[Write] = []
        for cid in self._children.pop(t.id, ()):
            c = self.live.get(cid)
            if c is None or c.state != S.AWAITING_PARENTS:
                continue
            if t.state == S.JOB_FINISHED:
                c.waiting -= 1
                try:
                    out.extend(self._resolve_refs(c, t))
                except InvalidRequest as exc:
                    c.error, c.finished_at = exc.message, now
                    s, events = self._transition(c, [S.FAILED], now,
                                                 {"parent": t.id, "reason": c.error})
                    out.extend(s)
                    self._cascade.append((c, events, c.state))
                    continue
                if c.waiting > 0:
                    if c.files and any(f.task == t.id for f in c.files):
                        out.append(schema.update_task(c))
                    continue
                path = [S.READY] if needs_agent(c.files, "in") else [S.READY, S.STAGED_IN]
                s, events = self._transition(c, path, now, {"parent": t.id})
            else:
                verb = "failed" if t.state == S.FAILED else "was killed"
                c.error, c.finished_at = f"parent task {t.id} {verb}", now
                s, events = self._transition(c, [t.state], now,
                                             {"parent": t.id, "reason": c.error})
            out.extend(s)
            self._cascade.append((c, events, c.state))
        return out

    def _resolve_refs(self, c: LiveTask, parent: LiveTask) -> list[Write]:
        """Make ``c``'s inputs that name ``parent``'s outputs concrete. Raises InvalidRequest."""
        if not c.files or not any(f.task == parent.id for f in c.files):
            return []
        out: list[Write] = []
        files = []
        for f in c.files:
            if f.direction == "in" and f.task == parent.id and f.state == "pending" and not (
                f.url or f.site_path
            ):
                data = parent.out_data.get(f.output) if parent.out_data else None
                f, got = resolve(f, parent.files, data, parent_site=parent.site_id,
                                 site=c.site_id, parent_workdir=workdir_of(parent))
                if got is not None:
                    c.in_data = c.in_data or {}
                    c.in_data[f.path] = got
                    out.append(schema.upsert_data(c.id, "in", f.path, got))
            files.append(f)
        c.files = files
        return out

    def _transition(
        self, t: LiveTask, path: list[S], now: float, data: dict[str, Any] | None = None
    ) -> tuple[list[Write], list[Ev]]:
        stmts, events = self._event_rows(t, path, now, data)
        stmts.append(schema.update_task(t))
        return stmts, events

    def _share(self, text: str) -> str:
        """One copy of each distinct text (bounded), for the live tasks to share.

        For what repeats across tasks (tags, environments); parameters and
        argv are mostly unique and are kept as they are.
        """
        shared = self._shared.get(text)
        if shared is not None:
            return shared
        if len(self._shared) < 100_000:
            self._shared[text] = text
        return text

    def _enqueue(self, t: LiveTask) -> None:
        self.dispatcher.push(t)
        self._demand_dirty.add(t.site_id)
        self._wake.set()

    def _emit(self, t: LiveTask, events: list[Ev]) -> None:
        """Queue committed events for the owner's matching watchers (call after commit)."""
        subs = self._watchers.get(t.owner_id)
        if not subs or not events:
            return
        site = self.sites[t.site_id].name
        tags = t.tags
        for sub in subs.values():
            f = sub.filter
            if f.ids and t.id not in f.ids:
                continue
            if f.site is not None and f.site != site:
                continue
            if f.app is not None and f.app != t.app:
                continue
            if f.tags and any(tags.get(k) != v for k, v in f.tags.items()):
                continue
            chosen = [
                P.TaskEvent(id=eid, task_id=t.id, from_state=src, to_state=dst, time=when,
                            data=data, tags=tags)
                for eid, src, dst, when, data in events
                if not f.states or dst in f.states
            ]
            if not chosen:
                continue
            if sub.held is not None:
                sub.held.extend(chosen)
                continue
            entry = self._pending_events.setdefault(sub.peer.id, (sub.peer, {}))
            entry[1].setdefault(sub.watch_id, []).extend(chosen)

    def _finished(self, t: LiveTask) -> None:
        """A final state is committed: forget the task, answer its waiters."""
        if self.live.pop(t.id, None) is None:
            return
        waiters = self._waiters.pop(t.id, None)
        if waiters:
            info = self._info(t)
            for peer, req_id in waiters:
                entry = self._pending_results.setdefault((peer.id, req_id), (peer, []))
                entry[1].append(info)
        key = {S.JOB_FINISHED: "tasks_finished", S.FAILED: "tasks_failed"}.get(
            t.state, "tasks_killed"
        )
        self.counters[key] += 1

    def _flush(self) -> None:
        for peer, by_watch in self._pending_events.values():
            for watch_id, events in by_watch.items():
                peer.send(P.Events(watch_id=watch_id, events=events))
        self._pending_events.clear()
        budget = self.limits.max_frame_bytes // 2
        for (_pid, req_id), (peer, infos) in self._pending_results.items():
            for run in P.chunk_by_size(infos, P.payload, budget):
                peer.send(P.Results(req_id=req_id, tasks=run))
        self._pending_results.clear()

    def _info(self, t: LiveTask) -> P.TaskInfo:
        return P.TaskInfo(
            id=t.id, app=t.app, site=self.sites[t.site_id].name, state=t.state.value,
            params=t.params, tags=t.tags, priority=t.priority, attempt=t.attempt,
            retries=t.retries, max_retries=t.max_retries, exit_code=t.exit_code,
            error=t.error, stdout_tail=t.stdout_tail, stderr_tail=t.stderr_tail,
            created_at=t.created_at, started_at=t.started_at, finished_at=t.finished_at,
            pilot=t.pilot, workdir=t.workdir, result=t.result, files=t.files or [],
        )

    def _stored_info(self, t: LiveTask) -> P.TaskInfo:
        """A task read back from the store (its site may be unknown to memory)."""
        site = self.sites.get(t.site_id)
        return P.TaskInfo(
            id=t.id, app=t.app, site=site.name if site else "?", state=t.state.value,
            params=t.params, tags=t.tags, priority=t.priority, attempt=t.attempt,
            retries=t.retries, max_retries=t.max_retries, exit_code=t.exit_code,
            error=t.error, stdout_tail=t.stdout_tail, stderr_tail=t.stderr_tail,
            created_at=t.created_at, started_at=t.started_at, finished_at=t.finished_at,
            pilot=t.pilot, workdir=t.workdir, result=t.result, files=t.files or [],
        )

    def _site_of(self, who: Principal, name: str) -> SiteRec:
        sid = self.site_names.get((who.user_id, name))
        if sid is None or (who.site_id is not None and who.site_id != sid):
            raise NotFound(f"no site named {name!r}; create it with `tidewater site add {name}`")
        return self.sites[sid]

    # ================================================================== client requests

    async def add_site(self, who: Principal, peer: Peer, msg: P.AddSite) -> None:
        appmod.check_name("site", msg.name)
        if (who.user_id, msg.name) in self.site_names:
            raise InvalidRequest(f"site {msg.name!r} already exists", "exists")
        sid = self._next_site
        self._next_site += 1
        minted, token_row = self.tokens.row("site", who.user_id, site_id=sid, name="site token")
        rec = SiteRec(sid, who.user_id, msg.name, time.time())
        self.sites[sid] = rec
        self.site_names[(who.user_id, msg.name)] = sid
        info = P.SiteInfo(name=rec.name, created_at=rec.created_at)
        await self._write(
            [schema.insert_site(sid, who.user_id, msg.name, minted.id, rec.created_at),
             token_row,
             self.tokens.audit(who, "site.add", msg.name, token=minted.id)],
            lambda: peer.send(P.SiteAdded(req_id=msg.req_id, site=info, token=minted.token)),
        )

    def list_sites(self, who: Principal, peer: Peer, msg: P.ListSites) -> None:
        out = []
        for rec in self.sites.values():
            if rec.owner_id != who.user_id:
                continue
            pilots = [p for p in self.pilots.values() if p.site_id == rec.id and p.peer]
            out.append(P.SiteInfo(
                name=rec.name, created_at=rec.created_at, pilots=len(pilots),
                cores=sum(p.cores for p in pilots), gpus=sum(p.gpus for p in pilots),
                agent=rec.id in self.batch.agents,
                batch_jobs=sum(1 for j in self.batch.jobs.values()
                               if j.site_id == rec.id and j.state not in states.JOB_FINAL),
            ))
        peer.send(P.SiteList(req_id=msg.req_id, sites=out))

    async def add_app(self, who: Principal, peer: Peer, msg: P.AddApp) -> None:
        site = self._site_of(who, msg.site)
        appmod.check_name("app", msg.name)
        if msg.function:
            if msg.command or msg.params:
                raise AppError("a function app has an import path, not a command or parameters")
            try:
                codec.check_import_path(msg.function)
            except ValueError as exc:
                raise AppError(str(exc)) from None
            specs: list[P.ParamSpec] = []
        else:
            specs = appmod.declare_params(msg.command, msg.params)
        hooks = msg.hooks if msg.hooks and any(msgspec.structs.astuple(msg.hooks)) else None
        for hook, path in (msgspec.structs.asdict(hooks) if hooks else {}).items():
            if path:
                try:
                    codec.check_import_path(path)
                except ValueError as exc:
                    raise AppError(f"hook {hook}: {exc}") from None
        if (site.id, msg.name) in self.apps and not msg.replace:
            raise AppError(
                f"app {msg.name!r} already exists on site {site.name!r} (pass replace to change it)"
            )
        rec = AppRec(site.id, msg.name, msg.command, specs, msg.description, msg.function, hooks)
        self.apps[(site.id, msg.name)] = rec
        info = P.AppInfo(site=site.name, name=rec.name, command=rec.command, params=specs,
                         description=rec.description, function=rec.function, hooks=hooks)
        await self._write(
            [schema.upsert_app(rec, time.time()),
             self.tokens.audit(who, "app.add", f"{site.name}/{msg.name}",
                               command=msg.command or msg.function, replace=msg.replace)],
            lambda: peer.send(P.AppAdded(req_id=msg.req_id, app=info)),
        )

    def list_apps(self, who: Principal, peer: Peer, msg: P.ListApps) -> None:
        out = []
        for rec in self.apps.values():
            site = self.sites[rec.site_id]
            if site.owner_id != who.user_id or (msg.site is not None and msg.site != site.name):
                continue
            out.append(P.AppInfo(site=site.name, name=rec.name, command=rec.command,
                                 function=rec.function, hooks=rec.hooks,
                                 params=rec.params, description=rec.description))
        peer.send(P.AppList(req_id=msg.req_id, apps=out))

    def _prepare(
        self, who: Principal, i: int, spec: P.TaskSpec, now: float
    ) -> tuple[LiveTask, list[int]]:
        where = f"task {i}" if i else "task"
        try:
            site = self._site_of(who, spec.site)
            app = self.apps.get((site.id, spec.app))
            if app is None:
                names = sorted(a.name for a in self.apps.values() if a.site_id == site.id)
                raise AppError(
                    f"unknown app {spec.app!r} on site {site.name!r} "
                    f"(registered: {', '.join(names) or 'none'})"
                )
            # Arguments and inline inputs have their own limit (max_inline_bytes).
            size = len(P.encode(spec)) - len(spec.args) - sum(
                len(i.data) for i in spec.inputs if i.data)
            if size > self.limits.max_params_bytes:
                raise LimitExceeded(
                    f"{size} bytes of parameters, tags and environment; the limit is "
                    f"{self.limits.max_params_bytes} (pass large data as files)"
                )
            if app.function:
                if spec.params:
                    raise ParamError(f"app {app.name!r} is a Python function: pass args, "
                                     "not params")
                if len(spec.args) > self.limits.max_inline_bytes:
                    raise LimitExceeded(
                        f"{len(spec.args)} bytes of arguments; the limit is "
                        f"{self.limits.max_inline_bytes} (pass large data as files)")
                values: dict[str, Any] = {}
                argv: list[str] = []
                shell = ""
            else:
                if spec.args:
                    raise ParamError(f"app {app.name!r} is a command: pass params, not args")
                values = appmod.validate_params(app.name, app.params, spec.params)
                argv, shell = appmod.render(app.command, values)
            res = spec.resources
            extra = check_resources(res, spec.wall_time)
            check_task_fits(site.name, res, self.batch.limits.get(site.id), spec.wall_time)
            if spec.max_retries < 0 or spec.max_retries > 100:
                raise InvalidRequest("max_retries must be between 0 and 100")
            if spec.timeout is not None and not spec.timeout > 0:
                raise InvalidRequest("timeout must be a positive number of seconds")
            for k in spec.env:
                if not appmod.ENV_RE.match(k):
                    raise InvalidRequest(f"invalid environment variable name {k!r}")
            for k, v in list(spec.env.items()) + list(spec.tags.items()):
                if "\x00" in k or "\x00" in v:
                    raise InvalidRequest("NUL bytes are not allowed in env or tags")
            workdir = check_workdir(spec.workdir) if spec.workdir else ""
            files, in_data, refs = check_files(spec, self.limits.max_inline_bytes)
        except InvalidRequest as exc:
            raise type(exc)(f"{where}: {exc.message}", exc.code) from None
        return LiveTask(
            id=0, owner_id=who.user_id, site_id=site.id, app=app.name, state=S.CREATED,
            params_j=_j(values), tags_j=self._share(_j(spec.tags)),
            priority=spec.priority,
            cores=max(res.cores, res.ranks_per_node * res.threads_per_rank),
            gpus=max(res.gpus, res.ranks_per_node * res.gpus_per_rank), timeout=spec.timeout,
            max_retries=spec.max_retries, retries=0, attempt=0, pilot="",
            argv_j=_j(argv), shell=shell, env_j=self._share(_j(spec.env)),
            workdir=workdir, exit_code=None, error="",
            stdout_tail="", stderr_tail="", created_at=now, started_at=None, finished_at=None,
            num_nodes=res.num_nodes, packing=res.node_packing_count, wall_time=spec.wall_time,
            func=app.function, args=spec.args if app.function else None,
            extra_j=self._share(_j(extra)) if extra else "", files=files, in_data=in_data,
        ), refs

    async def submit(self, who: Principal, peer: Peer, msg: P.Submit) -> None:
        if not msg.tasks:
            raise InvalidRequest("Submit carries no tasks")
        if len(msg.tasks) > self.limits.max_tasks_per_submit:
            raise LimitExceeded(
                f"{len(msg.tasks)} tasks in one Submit; the limit is "
                f"{self.limits.max_tasks_per_submit} (the client splits larger batches)"
            )
        if msg.key:
            prior = await self._prior_submission(who.user_id, msg.key, look_in_store=msg.resend)
            if prior is not None:
                # Reply after everything queued so far is committed.
                await self._write(
                    [], lambda: peer.send(P.Submitted(req_id=msg.req_id, ids=prior))
                )
                return
        now = time.time()
        prepared = [self._prepare(who, i, spec, now) for i, spec in enumerate(msg.tasks)]
        parents = [list(dict.fromkeys([*spec.parents, *refs]))
                   for spec, (_t, refs) in zip(msg.tasks, prepared, strict=True)]
        for _ in range(5):
            parent_state = await self._parent_states(who, parents)
            await self._resolve_at_submit(who, prepared, parent_state)
            # A parent that finished while the store was read must be seen finished.
            if all(p in self.live for p, ps in parent_state.items() if ps not in states.FINAL):
                break
        else:
            raise InvalidRequest("parents changed state during the submit; try again", "retry")
        stmts: list[Write] = []
        created: list[tuple[LiveTask, list[Ev]]] = []
        for (t, _refs), pids in zip(prepared, parents, strict=True):
            t.id = self._next_task
            self._next_task += 1
            path = states.submit_path()
            if pids:
                path = self._wait_for_parents(t, pids, parent_state, now)
                stmts.extend(schema.insert_parent(t.id, pid) for pid in set(pids))
            if path[-1] == S.STAGED_IN and needs_agent(t.files, "in"):
                path = path[:-1]  # READY until the site's agent has brought the inputs
            if t.in_data:
                stmts.extend(schema.upsert_data(t.id, "in", k, v) for k, v in t.in_data.items())
            ev_stmts, events = self._event_rows(t, path, now)
            stmts.append(schema.insert_task(t))
            stmts.extend(ev_stmts)
            for k, v in t.tags.items():
                stmts.append(schema.insert_tag(k, v, t.id))
            self.live[t.id] = t
            created.append((t, events))
        ids = [t.id for t, _ in created]
        if msg.key:
            span = (ids[0], len(ids))
            stmts.append(schema.insert_submission(who.user_id, msg.key, span[0], span[1], now))
            self._remember_key(who.user_id, msg.key, span)
        self.counters["tasks_submitted"] += len(ids)
        sites = sorted({self.sites[t.site_id].name for t, _ in created})
        apps_used = sorted({t.app for t, _ in created})
        stmts.append(self.tokens.audit(who, "task.submit", f"{ids[0]}-{ids[-1]}", count=len(ids),
                                       sites=sites, apps=apps_used))

        def committed() -> None:
            peer.send(P.Submitted(req_id=msg.req_id, ids=ids))
            for t, events in created:
                self._emit(t, events)
                if t.state in states.FINAL:
                    self._finished(t)  # a parent had already failed
                elif t.state in states.RUNNABLE and not t.pilot and t.id in self.live:
                    self._enqueue(t)
                elif t.state == S.READY:
                    self.staging.push(t, "in")

        await self._write(stmts, committed)

    async def _parent_states(self, who: Principal, parents: list[list[int]]) -> dict[int, S]:
        """The state of every parent named; NotFound for one ``who`` does not own."""
        wanted: dict[int, int] = {}  # parent id -> index of the first task naming it
        for i, pids in enumerate(parents):
            if len(pids) > 10_000:
                raise LimitExceeded(f"task {i}: {len(pids)} parents; the limit is 10000")
            for pid in pids:
                wanted.setdefault(pid, i)
        out: dict[int, S] = {}
        rest: list[int] = []
        for pid in wanted:
            t = self._owned_live(who, pid)
            if t is not None:
                out[pid] = t.state
            else:
                rest.append(pid)
        if rest:
            out.update(await self.store.task_states(who.user_id, rest))
        for pid, i in wanted.items():
            if pid not in out:
                raise NotFound(f"task {i}: parent task {pid} not found")
        return out

    async def _resolve_at_submit(
        self, who: Principal, prepared: list[tuple[LiveTask, list[int]]], state: dict[int, S]
    ) -> None:
        """Check every reference to a parent's output; resolve those of finished parents.

        Raises InvalidRequest (nothing changed) for an output the parent does not declare.
        """
        for i, (t, refs) in enumerate(prepared):
            if not refs:
                continue
            files = []
            for f in t.files or []:
                if not f.task or f.direction != "in":
                    files.append(f)
                    continue
                p_files, p_site, p_workdir, p_data = await self._parent_output(who, f)
                if not any(x.direction == "out" and x.path == f.output for x in p_files or []):
                    raise InvalidRequest(f"task {i}: input {f.path!r}: task {f.task} has no "
                                         f"output {f.output!r}")
                if state[f.task] == S.JOB_FINISHED:
                    try:
                        f, got = resolve(f, p_files, p_data, parent_site=p_site,
                                         site=t.site_id, parent_workdir=p_workdir)
                    except InvalidRequest as exc:
                        raise InvalidRequest(f"task {i}: {exc.message}") from None
                    if got is not None:
                        t.in_data = t.in_data or {}
                        t.in_data[f.path] = got
                files.append(f)
            t.files = files

    async def _parent_output(
        self, who: Principal, f: P.FileInfo
    ) -> tuple[list[P.FileInfo] | None, int, str, bytes | None]:
        """A parent's files, site, work directory and the named output's inline bytes."""
        p = self._owned_live(who, f.task)
        if p is not None:
            data = p.out_data.get(f.output) if p.out_data else None
            return p.files, p.site_id, workdir_of(p), data
        rows = await self.store.tasks(who.user_id, [f.task])
        if not rows:
            raise NotFound(f"parent task {f.task} not found")
        stored = rows[0]
        data = await self.store.output_data(f.task, f.output)
        return stored.files, stored.site_id, task_workdir(stored.workdir, f.task), data

    def _wait_for_parents(self, t: LiveTask, parents: list[int], state: dict[int, S],
                          now: float) -> list[S]:
        """The creating path of a task with parents; registers it with the unfinished ones."""
        waiting: list[int] = []
        for pid in dict.fromkeys(parents):
            ps = state[pid]
            if ps == S.JOB_FINISHED:
                continue
            if ps in (S.FAILED, S.KILLED):
                verb = "failed" if ps == S.FAILED else "was killed"
                t.error, t.finished_at = f"parent task {pid} {verb}", now
                return [S.AWAITING_PARENTS, ps]
            waiting.append(pid)
        if not waiting:
            return [S.AWAITING_PARENTS, S.READY, S.STAGED_IN]
        t.waiting = len(waiting)
        for pid in waiting:
            self._children.setdefault(pid, []).append(t.id)
        return [S.AWAITING_PARENTS]

    def _remember_key(self, owner: int, key: str, span: tuple[int, int]) -> None:
        self._recent_keys[(owner, key)] = span
        while len(self._recent_keys) > 10_000:
            self._recent_keys.popitem(last=False)

    async def _prior_submission(
        self, owner: int, key: str, *, look_in_store: bool
    ) -> list[int] | None:
        span = self._recent_keys.get((owner, key))
        if span is None and look_in_store:
            span = await self.store.prior_submission(owner, key)
        return None if span is None else list(range(span[0], span[0] + span[1]))

    async def _owned_final(self, who: Principal, ids: list[int]) -> dict[int, P.TaskInfo]:
        """Tasks of ``who`` among ``ids`` that are not live (read from the store)."""
        if not ids:
            return {}
        out: dict[int, P.TaskInfo] = {}
        for t in await self.store.tasks(who.user_id, ids):
            out[t.id] = self._stored_info(t)
        return out

    async def _owned(
        self, who: Principal, ids: list[int]
    ) -> tuple[dict[int, LiveTask], dict[int, P.TaskInfo]]:
        """Split ``ids`` (deduplicated) into ``who``'s live tasks and final ones from the store.

        Raises :class:`NotFound` naming the first id ``who`` has no task for.
        """
        ids = list(dict.fromkeys(ids))
        live = {i: t for i in ids if (t := self._owned_live(who, i)) is not None}
        rest = [i for i in ids if i not in live]
        final = await self._owned_final(who, rest)
        missing = [i for i in rest if i not in final]
        if missing:
            raise NotFound(f"no task with id {missing[0]}")
        return live, final

    def _owned_live(self, who: Principal, task_id: int) -> LiveTask | None:
        t = self.live.get(task_id)
        if t is None or t.owner_id != who.user_id:
            return None
        if who.site_id is not None and t.site_id != who.site_id:
            return None
        return t

    async def cancel(self, who: Principal, peer: Peer, msg: P.Cancel) -> None:
        live, _final = await self._owned(who, msg.ids)
        now = time.time()
        stmts: list[Write] = []
        changed: list[tuple[LiveTask, list[Ev], str]] = []
        for t in live.values():
            if t.state in states.FINAL:
                continue
            pilot = t.pilot
            self.staging.cancelled(t, t.state)
            t.error = "cancelled by user"
            if pilot:
                self._unassign(t)
            self.dispatcher.discard(t.id)
            s, events = self._transition(t, [S.KILLED], now, {"reason": "cancelled"})
            stmts.extend(s)
            changed.append((t, events, pilot))
        done = [t.id for t, _, _ in changed]
        if done:
            stmts.append(self.tokens.audit(who, "task.cancel", _id_ranges(done), count=len(done)))

        def committed() -> None:
            kills: dict[str, list[tuple[int, int]]] = {}
            for t, events, pilot in changed:
                self._emit(t, events)
                self._finished(t)
                if pilot:
                    kills.setdefault(pilot, []).append((t.id, t.attempt))
            for pilot_id, pairs in kills.items():
                rec = self.pilots.get(pilot_id)
                if rec is not None and rec.peer is not None:
                    rec.peer.send(P.Kill(tasks=pairs, reason="cancelled by user"))
            peer.send(P.Cancelled(req_id=msg.req_id, ids=done))

        await self._write(stmts, committed)

    async def wait(self, who: Principal, peer: Peer, msg: P.Wait) -> None:
        live, final = await self._owned(who, msg.ids)
        for t in live.values():
            if t.id in self.live:
                self._waiters.setdefault(t.id, []).append((peer, msg.req_id))
            else:
                # Finished while we read the store: its row is committed now.
                final.update(await self._owned_final(who, [t.id]))
        for tid, info in list(final.items()):
            if info.state not in states.FINAL:
                # A task leaves memory only after its final row is committed,
                # so this is a bug; never answer a Wait with a non-final row.
                log.error("task %d is neither live nor final (%s)", tid, info.state)
                del final[tid]
                self._waiters.setdefault(tid, []).append((peer, msg.req_id))
        if final:
            for run in P.chunk_by_size(list(final.values()), P.payload,
                                       self.limits.max_frame_bytes // 2):
                peer.send(P.Results(req_id=msg.req_id, tasks=run))

    async def query(self, who: Principal, peer: Peer, msg: P.Query) -> None:
        q = self._task_query(who, msg.filter)
        limit = max(1, min(msg.limit, self.limits.max_query_limit))
        rows = await self.store.query(q, after_id=msg.after_id, limit=limit, newest=msg.newest)
        infos = [self._stored_info(t) for t in rows]
        # Function results can be large: keep the frame within its limit (for newest
        # first, the newest that fit).
        runs = P.chunk_by_size(infos, P.payload, self.limits.max_frame_bytes // 2)
        infos = runs[0] if runs else []
        if msg.newest:
            infos.reverse()
        peer.send(P.TaskList(req_id=msg.req_id, tasks=infos, truncated=len(runs) > 1))

    def _task_query(self, who: Principal, f: P.TaskFilter) -> TaskQuery:
        """The store query of a filter, with names resolved. Raises InvalidRequest, NotFound."""
        site_ids: list[int] = []
        if who.site_id is not None:
            site_ids.append(who.site_id)
        if f.states:
            valid = {x.value for x in states.STORED}
            bad = [s for s in f.states if s not in valid]
            if bad:
                raise InvalidRequest(
                    f"unknown state {bad[0]!r} (states: {', '.join(x.value for x in S)})"
                )
        if f.site is not None:
            sid = self.site_names.get((who.user_id, f.site))
            if sid is None:
                raise NotFound(f"no site named {f.site!r}")
            site_ids.append(sid)
        return TaskQuery(owner_id=who.user_id, site_ids=tuple(site_ids), states=tuple(f.states),
                         app=f.app, ids=tuple(f.ids), tags=tuple(f.tags.items()))

    async def watch(self, who: Principal, peer: Peer, msg: P.Watch) -> None:
        if msg.filter.site is not None:
            self._site_of(who, msg.filter.site)
        if msg.filter.ids:
            await self._owned(who, msg.filter.ids)
        open_here = sum(1 for k in self._watchers.get(who.user_id, {}) if k[0] == peer.id)
        if open_here >= self.limits.max_watches:
            raise LimitExceeded(
                f"{open_here} watches are open on this connection; the limit is "
                f"{self.limits.max_watches} (close some with Unwatch, or filter by tags)"
            )
        watch_id = self._next_watch
        self._next_watch += 1
        # Registered before any replay, so nothing committed meanwhile is
        # missed; live events wait in ``held`` until the replay is sent, so
        # the client sees ids in order.
        sub = WatchSub(peer, watch_id, msg.filter, held=[] if msg.since_event else None)
        self._watchers.setdefault(who.user_id, {})[(peer.id, watch_id)] = sub
        peer.send(P.Watching(req_id=msg.req_id, watch_id=watch_id,
                             start_event=self._committed_event))
        if not msg.since_event:
            return
        q = self._task_query(who, msg.filter)
        try:
            rows = await self.store.events_since(q, msg.since_event, 100_000)
        finally:
            held, sub.held = sub.held or [], None
        wanted = set(msg.filter.states)
        events = [
            P.TaskEvent(id=e.id, task_id=e.task_id, from_state=e.src, to_state=e.dst,
                        time=e.time, data=e.data, tags=e.tags)
            for e in rows if not wanted or e.dst in wanted
        ]
        last = events[-1].id if events else msg.since_event
        events += [e for e in held if e.id > last]
        if events:
            peer.send(P.Events(watch_id=watch_id, events=events))

    def unwatch(self, who: Principal, peer: Peer, msg: P.Unwatch) -> None:
        subs = self._watchers.get(who.user_id, {})
        if subs.pop((peer.id, msg.watch_id), None) is None:
            raise NotFound(f"no watch {msg.watch_id} on this connection")
        peer.send(P.Done(req_id=msg.req_id))

    def client_gone(self, who: Principal, peer: Peer) -> None:
        subs = self._watchers.get(who.user_id)
        if subs:
            for key in [k for k in subs if k[0] == peer.id]:
                del subs[key]
        for tid in list(self._waiters):
            rest = [w for w in self._waiters[tid] if w[0].id != peer.id]
            if rest:
                self._waiters[tid] = rest
            else:
                del self._waiters[tid]

    # ================================================================== pilots

    def pilot_hello(
        self, who: Principal, peer: Peer, hello: P.Hello,
        welcome: Callable[[str], P.Welcome] | None = None,
    ) -> PilotRec:
        """A pilot connected (or reconnected): welcome it, then reconcile what it holds.

        ``welcome(site_name)`` builds the Welcome, which must be the first
        frame the pilot gets, before any Kill the reconciliation sends.
        Raises :class:`InvalidRequest` (nothing sent) if the Hello is refused.
        """
        job = self.batch.jobs.get(who.batch_job) if who.batch_job else None
        if who.batch_job and (job is None or (hello.batch_job and hello.batch_job != job.id)):
            raise NotFound(f"this pilot token is not for batch job {hello.batch_job}")
        if len(hello.nodes) > 100_000 or any(n.cores < 0 or n.gpus < 0 for n in hello.nodes):
            raise InvalidRequest("invalid node list")
        if who.site_id is not None:
            if hello.site and hello.site != self.sites[who.site_id].name:
                raise NotFound(f"this site token is not for site {hello.site!r}")
            site = self.sites[who.site_id]
        elif not hello.site:
            raise InvalidRequest(
                "a pilot connecting with a user token must name its site (tidewater pilot --site)"
            )
        else:
            site = self._site_of(who, hello.site)
        if not hello.pilot_id or len(hello.pilot_id) > 128:
            raise InvalidRequest("a pilot must send a pilot_id of 1-128 characters")
        if hello.cores < 0 or hello.gpus < 0:
            raise InvalidRequest("cores and gpus must not be negative")
        old = self.pilots.get(hello.pilot_id)
        if old is not None and (old.site_id != site.id or old.owner_id != who.user_id):
            raise InvalidRequest("pilot_id is in use by another site")
        if old is not None and old.peer is not None and old.peer is not peer:
            old.peer.close(4000, "replaced by a new connection of the same pilot")
        if welcome is not None:
            peer.send(welcome(site.name))
        rec = old or PilotRec(hello.pilot_id, site.id, who.user_id, "", 0, 0)
        rec.hostname, rec.cores, rec.gpus, rec.peer = hello.hostname, hello.cores, hello.gpus, peer
        rec.node_count = max(1, len(hello.nodes))
        rec.draining = False
        if job is not None:
            rec.batch_job = job.id
            job.pilots.add(rec.pilot_id)
            job.seen_pilot = True
            if job.first_pilot_at is None:
                job.first_pilot_at = time.time()
                job.first_pilot_process_at = hello.process_started_at
            if job.state in ("pending_submission", "queued"):
                # A pilot inside it proves the job runs, before the agent's next look.
                job.state, job.started_at = "running", job.started_at or time.time()
                self._write_soon([schema.upsert_job(job)], lambda: None)
        self.pilots[rec.pilot_id] = rec
        self.leases.touch(rec.pilot_id, time.time())
        self._lease_changed.set()

        held = dict(hello.held)
        kills: list[tuple[int, int]] = []
        stmts: list[Write] = []
        lost: list[Touched] = []
        now = time.time()
        for task_id in list(rec.assigned):
            t = self.live.get(task_id)
            if t is None or t.pilot != rec.pilot_id:
                rec.assigned.discard(task_id)
                continue
            if held.get(task_id) == t.attempt:
                continue
            # We gave it this task but the pilot does not have it.
            if t.state == S.RUNNING:
                s, events = self._fail_attempt(t, S.RUN_TIMEOUT, now, "the pilot lost the task")
                stmts.extend(s)
                lost.append((t, events, t.state))
            else:
                self._unassign(t)
                self._enqueue(t)
        for task_id, attempt in held.items():
            t = self.live.get(task_id)
            if t is not None and t.pilot == rec.pilot_id and t.attempt == attempt:
                continue
            if (
                t is not None and not t.pilot and t.state in states.RUNNABLE
                and attempt > t.attempt and t.site_id == site.id
            ):
                # Assigned before a controller restart and not yet started: adopt.
                self.dispatcher.discard(t.id)
                t.attempt, t.pilot = attempt, rec.pilot_id
                rec.assigned.add(t.id)
                continue
            kills.append((task_id, attempt))
        if kills:
            peer.send(P.Kill(tasks=kills, reason="no longer assigned to this pilot"))
        self.dispatcher.add_pilot(PilotSlot(
            rec.pilot_id, site.id, hello.cores, hello.gpus,
            max(hello.credit_cores, 0), max(hello.credit_gpus, 0),
            batch_job=rec.batch_job, nodes=rec.node_count, busy=len(rec.assigned),
            end_time=hello.end_time,
        ))
        self._demand_dirty.add(site.id)
        if stmts:
            self._write_soon(stmts, lambda: self._after_commit(lost))
        self._wake.set()
        log.info("pilot %s on %s (%s) connected: %d cores, %d gpus, holds %d tasks",
                 rec.pilot_id, site.name, hello.hostname, hello.cores, hello.gpus, len(held))
        return rec

    def _write_soon(self, stmts: list[Write], cb: Callable[[], None]) -> None:
        """Queue a write from synchronous code (pilot loss, reconnects), in order."""
        self.store.write_nowait(stmts, self._watermarked(cb))

    async def _write(self, stmts: list[Write], cb: Callable[[], None]) -> None:
        """Queue a write (in order; waits only for room in the queue)."""
        await self.store.write(stmts, self._watermarked(cb))

    def _watermarked(self, cb: Callable[[], None]) -> Callable[[], None]:
        # Ops are queued right after their event ids are allocated, with no
        # await in between, and committed in queue order: once this op is
        # committed, so is every event id allocated before it was queued.
        mark = self._next_event - 1
        # Children moved by the final transitions in this write: their effects
        # (events, waiters, the queue) follow the same commit.
        cascade, self._cascade = self._cascade, []

        def committed() -> None:
            self._committed_event = max(self._committed_event, mark)
            cb()
            if cascade:
                self._after_commit(cascade)

        return committed

    def _unassign(self, t: LiveTask) -> None:
        self._attempt_over(t)
        t.pilot = ""

    def _attempt_over(self, t: LiveTask) -> None:
        """The task's attempt no longer occupies its pilot (and the nodes it reserved)."""
        rec = self.pilots.get(t.pilot)
        if rec is not None and t.id in rec.assigned:
            rec.assigned.discard(t.id)
            self.dispatcher.task_left(rec.pilot_id)
            self._demand_dirty.add(rec.site_id)
        self.dispatcher.release(t.id)

    def _fail_attempt(
        self, t: LiveTask, kind: S, now: float, why: str, *, exit_code: int | None = None,
        give_up: bool = False,
    ) -> tuple[list[Write], list[Ev]]:
        """RUN_ERROR/RUN_TIMEOUT, then RESTART_READY or FAILED. Caller enqueues after commit.

        ``give_up``: the app's handler chose to fail; no retry whatever remains.
        """
        path = states.failure_path(kind, retries=t.retries,
                                   max_retries=t.retries if give_up else t.max_retries)
        t.error = why
        t.exit_code = exit_code
        t.finished_at = now
        if path[-1] == S.RESTART_READY:
            t.retries += 1
            self.counters["tasks_retried"] += 1
        self._unassign(t)
        data: dict[str, Any] = {"attempt": t.attempt, "reason": why}
        if exit_code is not None:
            data["exit_code"] = exit_code
        return self._transition(t, path, now, data)

    def _after_commit(self, items: list[Touched]) -> None:
        """Effects of committed transitions: push events, answer waiters, requeue.

        Each item carries the state its own commit wrote. Memory may be ahead
        (a later report for the same task is already applied but not yet
        committed), so "final" and "runnable" are judged by what was written.
        """
        for t, events, written in items:
            self._emit(t, events)
            if written in states.FINAL:
                self._finished(t)
            elif (
                written in states.RUNNABLE and t.state in states.RUNNABLE and not t.pilot
                and t.id in self.live
            ):
                self._enqueue(t)
            elif written == t.state and written in (S.READY, S.RUN_DONE):
                self.staging.push(t, "in" if written == S.READY else "out")

    async def reports(self, rec: PilotRec, msg: P.Reports) -> None:
        self.leases.touch(rec.pilot_id, time.time())
        stmts: list[Write] = []
        touched: list[Touched] = []
        for r in msg.reports:
            t = self.live.get(r.task_id)
            if (
                t is None or t.state in states.FINAL or t.pilot != rec.pilot_id
                or t.attempt != r.attempt
            ):
                self.counters["stale_reports"] += 1
                log.debug("ignoring stale report %s from pilot %s", r, rec.pilot_id)
                continue
            now = r.time
            s: list[Write] = []
            events: list[Ev] = []
            if r.kind == "started":
                if t.state in states.RUNNABLE:
                    t.started_at = now
                    s, events = self._transition(
                        t, [S.RUNNING], now, {"attempt": t.attempt, "pilot": rec.pilot_id}
                    )
            elif r.kind == "done":
                if t.state != S.RUNNING:
                    continue
                t.exit_code, t.finished_at = r.exit_code, now
                t.stdout_tail, t.stderr_tail = r.stdout_tail, r.stderr_tail
                if r.result is not None and len(r.result) > self.limits.max_inline_bytes:
                    s, events = self._fail_attempt(
                        t, S.RUN_ERROR, now, f"the return value is {len(r.result)} bytes; the "
                        f"limit is {self.limits.max_inline_bytes} (write large results to files)")
                    stmts.extend(s)
                    touched.append((t, events, t.state))
                    continue
                t.result = r.result
                missing = self._outputs_arrived(t, r.outputs, s)
                if missing:
                    s2, events = self._fail_attempt(t, S.RUN_ERROR, now, missing, exit_code=0)
                    stmts.extend(s + s2)
                    touched.append((t, events, t.state))
                    continue
                self._attempt_over(t)
                path = [S.RUN_DONE] if needs_agent(t.files, "out") else states.finish_path()
                s2, events = self._transition(t, path, now, {"exit_code": 0})
                s.extend(s2)
            elif r.kind in ("error", "timeout"):
                if t.state != S.RUNNING:
                    continue
                t.stdout_tail, t.stderr_tail = r.stdout_tail, r.stderr_tail
                kind = S.RUN_ERROR if r.kind == "error" else S.RUN_TIMEOUT
                why = r.message or (
                    f"exit code {r.exit_code}" if r.kind == "error" else "timed out"
                )
                if r.hook:
                    why = f"{why} (the app's handler chose {r.hook})"
                s, events = self._fail_attempt(t, kind, now, why, exit_code=r.exit_code,
                                               give_up=r.hook == "fail")
            else:  # killed or lost on the pilot without our asking
                if t.state == S.RUNNING:
                    s, events = self._fail_attempt(
                        t, S.RUN_TIMEOUT, now, r.message or f"task {r.kind} on the pilot"
                    )
                else:
                    self._unassign(t)
                    touched.append((t, [], t.state))
                    continue
            stmts.extend(s)
            touched.append((t, events, t.state))
        seq = msg.seq
        peer = rec.peer

        def committed() -> None:
            self._after_commit(touched)
            if peer is not None:
                peer.send(P.Ack(seq=seq))

        await self._write(stmts, committed)

    def _outputs_arrived(
        self, t: LiveTask, found: list[P.OutputFile], stmts: list[Write]
    ) -> str:
        """Record the outputs a pilot found after a successful run; say which are missing."""
        if not t.files:
            return ""
        by_path = {o.path: o for o in found}
        limit = self.limits.max_inline_bytes
        missing: list[str] = []
        files = []
        for f in t.files:
            o = by_path.get(f.path)
            if f.direction != "out" or f.url or o is None:
                files.append(f)
                continue
            if o.size is None:
                missing.append(f.path)
            elif o.data is not None and len(o.data) == o.size <= limit:
                f = msgspec.structs.replace(f, state="inline", size=o.size, sha256=o.sha256)
                t.out_data = t.out_data or {}
                t.out_data[f.path] = o.data
                stmts.append(schema.upsert_data(t.id, "out", f.path, o.data))
            else:
                f = msgspec.structs.replace(f, state="on_site", size=o.size, sha256=o.sha256)
            files.append(f)
        t.files = files
        if missing:
            return ("the task exited 0 but did not produce "
                    + ", ".join(f"output {m!r}" for m in missing))
        return ""

    def credit(self, rec: PilotRec, msg: P.Credit) -> None:
        self.dispatcher.grant(rec.pilot_id, msg.cores, msg.gpus)
        self._wake.set()

    def heartbeat(self, rec: PilotRec, msg: P.Heartbeat) -> None:
        """Renew the pilot's lease and answer, so the pilot hears the controller too."""
        now = time.time()
        self.leases.touch(rec.pilot_id, now)
        if rec.peer is not None:
            rec.peer.send(P.Ping(time=now))

    def drain(self, rec: PilotRec, reason: str) -> None:
        """The pilot is stopping: it gets no new work from now on."""
        self.dispatcher.remove_pilot(rec.pilot_id)
        rec.draining = True
        self._demand_dirty.add(rec.site_id)
        self._wake.set()
        log.info("pilot %s is draining: %s", rec.pilot_id, reason or "no reason given")

    def pilot_gone(self, rec: PilotRec, peer: Peer, *, bye: bool) -> None:
        """The connection ended. After Bye the pilot is done; otherwise its lease runs."""
        if rec.peer is not peer:
            return  # an older connection of a pilot that already reconnected
        rec.peer = None
        self.dispatcher.remove_pilot(rec.pilot_id)
        self._demand_dirty.add(rec.site_id)
        self._wake.set()
        if bye:
            self.leases.drop(rec.pilot_id)
            self._pilot_lost(rec, "the pilot exited")

    def _pilot_lost(self, rec: PilotRec, why: str) -> None:
        now = time.time()
        stmts: list[Write] = []
        touched: list[Touched] = []
        for task_id in list(rec.assigned):
            t = self.live.get(task_id)
            if t is None or t.pilot != rec.pilot_id or t.state in states.FINAL:
                continue
            if t.state == S.RUNNING:
                s, events = self._fail_attempt(t, S.RUN_TIMEOUT, now, why)
                stmts.extend(s)
                touched.append((t, events, t.state))
            else:
                self._unassign(t)
                touched.append((t, [], t.state))
        rec.assigned.clear()
        self.dispatcher.remove_pilot(rec.pilot_id)
        self.pilots.pop(rec.pilot_id, None)
        job = self.batch.jobs.get(rec.batch_job)
        if job is not None:
            job.pilots.discard(rec.pilot_id)
        self._demand_dirty.add(rec.site_id)
        self._wake.set()
        if rec.peer is not None:
            rec.peer.close(4001, why)
        if touched:
            log.warning("pilot %s: %s; %d tasks requeued or failed", rec.pilot_id, why,
                        len(touched))
            self._write_soon(stmts, lambda: self._after_commit(touched))

    # ================================================================== actors

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            hold = self._dispatch_hold_until - time.monotonic()
            if hold > 0:
                await anyio.sleep(hold)
            self._dispatch_once()
            if self._demand_dirty:
                dirty, self._demand_dirty = self._demand_dirty, set()
                self.batch.send_demand(dirty)

    def _dispatch_once(self) -> None:
        out: dict[str, list[P.Assignment]] = {}
        for pilot_id, task_id in self.dispatcher.match(time.time()):
            t = self.live.get(task_id)
            rec = self.pilots.get(pilot_id)
            if (
                t is None or rec is None or rec.peer is None or t.pilot
                or t.state not in states.RUNNABLE
            ):
                self.dispatcher.grant(pilot_id, t.cores if t else 0, t.gpus if t else 0)
                continue
            t.attempt += 1
            t.pilot = pilot_id
            rec.assigned.add(t.id)
            self._demand_dirty.add(rec.site_id)
            out.setdefault(pilot_id, []).append(self._assignment(t, rec))
        budget = self.limits.max_frame_bytes // 2
        for pilot_id, tasks in out.items():
            rec = self.pilots[pilot_id]
            assert rec.peer is not None
            for run in P.chunk_by_size(tasks, P.payload, budget):
                rec.peer.send(P.RunTasks(tasks=run))

    def _assignment(self, t: LiveTask, rec: PilotRec) -> P.Assignment:
        slot = self.dispatcher.pilot(rec.pilot_id)
        others = self.dispatcher.reserved(t.id)
        if others and slot is not None:
            cores, gpus = slot.cores, slot.gpus  # the whole node is the task's
            hosts = [rec.hostname] + [
                (self.pilots[p].hostname if p in self.pilots else p) for p in others
            ]
        elif slot is not None:
            cores, gpus = slot.footprint(t)
            hosts = []
        else:
            cores, gpus, hosts = t.cores, t.gpus, []
        extra = t.extra
        return P.Assignment(
            task_id=t.id, attempt=t.attempt, argv=t.argv, shell=t.shell,
            env=t.env, workdir=workdir_of(t), cores=cores,
            gpus=gpus, timeout=t.timeout, wall_time=t.wall_time, hosts=hosts,
            num_nodes=t.num_nodes, function=t.func, args=t.args or b"",
            ranks_per_node=int(extra.get("ranks_per_node", 1)),
            threads_per_rank=int(extra.get("threads_per_rank", 1)),
            gpus_per_rank=int(extra.get("gpus_per_rank", 0)),
            inputs=list(t.in_data.items()) if t.in_data else [],
            outputs=[f.path for f in t.files if f.direction == "out" and not f.url]
            if t.files else [],
            inline_limit=self.limits.max_inline_bytes,
            hooks=app.hooks if (app := self.apps.get((t.site_id, t.app))) else None,
        )

    async def _lease_loop(self) -> None:
        while True:
            deadline = self.leases.next_deadline()
            with anyio.move_on_after(
                max(0.05, deadline - time.time()) if deadline is not None else 3600
            ):
                await self._lease_changed.wait()
                self._lease_changed = anyio.Event()
                continue
            for pilot_id in self.leases.expired(time.time()):
                rec = self.pilots.get(pilot_id)
                if rec is not None:
                    self._pilot_lost(
                        rec, f"pilot {pilot_id} lost: silent for {self.t.lease_timeout:g}s"
                    )

    # ================================================================== metrics

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {f"tidewater_{k}_total": v for k, v in self.counters.items()}
        out["tidewater_live_tasks"] = len(self.live)
        out["tidewater_queued_tasks"] = self.dispatcher.queued()
        out["tidewater_pilots_connected"] = sum(1 for p in self.pilots.values() if p.peer)
        out["tidewater_store_batches_total"] = self.store.batches
        out["tidewater_store_ops_total"] = self.store.ops_committed
        out["tidewater_uptime_seconds"] = time.time() - self.started_at
        return out


def check_workdir(path: str) -> str:
    """A task work directory: relative, normalised, never leaving the site's root."""
    if "\x00" in path or len(path) > 1024:
        raise InvalidRequest(f"invalid workdir {path!r}")
    if path.startswith(("/", "~")) or os.path.isabs(path):
        raise InvalidRequest(f"workdir {path!r} must be relative to the site's work root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InvalidRequest(f"workdir {path!r} may not be empty or contain '..'")
    return "/".join(parts)


_RESOURCE_DEFAULTS = {
    "num_nodes": 1, "ranks_per_node": 1, "threads_per_rank": 1, "gpus_per_rank": 0,
    "node_packing_count": 0,
}


def check_resources(res: P.Resources, wall_time: float | None) -> dict[str, Any]:
    """Validate a task's resources; the launch fields that differ from their defaults."""
    if res.cores < 1 or res.gpus < 0:
        raise InvalidRequest("resources: cores must be >= 1 and gpus >= 0")
    extra: dict[str, Any] = {}
    for name, default in _RESOURCE_DEFAULTS.items():
        value = getattr(res, name)
        low = 0 if default == 0 else 1
        if not low <= value <= 100_000:
            raise InvalidRequest(f"resources: {name} must be between {low} and 100000")
        if value != default:
            extra[name] = value
    if wall_time is not None:
        if not wall_time > 0:
            raise InvalidRequest("wall_time must be a positive number of seconds")
        extra["wall_time"] = wall_time
    return extra


def _id_ranges(ids: list[int]) -> str:
    """``1-3,7`` for [1, 2, 3, 7]: an audit entry stays short for a big cancel."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


__all__ = ["Controller", "Peer", "Principal", "check_workdir", "ParamError"]
