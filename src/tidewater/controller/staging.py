"""Tasks' inputs and outputs: checked at submit, moved by the site's agent, inline when small.

A task's files are a list of :class:`~tidewater.proto.FileInfo` kept on the
task (spec and state together, stored as one blob). The path of a task with
files::

    READY ──(agent: every input arrived)──▶ STAGED_IN ──▶ RUNNING ──▶ RUN_DONE
      │                                                                 │
      └─(an input failed after its retries)─▶ FAILED   (agent: outputs sent) ─▶ STAGED_OUT
                                                                          ─▶ JOB_FINISHED

Inline inputs (``data``) travel with the task to its pilot, so a task with
only inline inputs is runnable at once. Outputs without a URL come back
inline in the pilot's report when small, and otherwise stay in the task's
work directory on the site (``on_site``), where a child on the same site can
use them and ``client.download`` reads them through the agent.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .. import proto as P
from ..agents.transfers.base import parse_url
from ..errors import InvalidRequest, LimitExceeded, NotFound, TransferError
from ..paths import check_relpath
from ..states import TaskState as S
from .store import schema
from .store.base import Write

if TYPE_CHECKING:
    from .core import Controller, Peer, Principal
    from .model import LiveTask

log = logging.getLogger("tidewater.controller")

MAX_FILES = 1000
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_files(spec: P.TaskSpec, inline_limit: int) -> tuple[
    list[P.FileInfo] | None, dict[str, bytes] | None, list[int]
]:
    """Validate a spec's inputs and outputs (pure).

    Returns the file list, the inline inputs' bytes, and the tasks whose
    outputs are referenced (they become parents). Raises InvalidRequest.
    """
    if not spec.inputs and not spec.outputs:
        return None, None, []
    if len(spec.inputs) + len(spec.outputs) > MAX_FILES:
        raise LimitExceeded(f"{len(spec.inputs) + len(spec.outputs)} inputs and outputs; "
                            f"the limit is {MAX_FILES} (transfer directories instead)")
    files: list[P.FileInfo] = []
    data: dict[str, bytes] = {}
    refs: list[int] = []
    seen: set[tuple[str, str]] = set()
    inline_total = 0
    for i in spec.inputs:
        path = check_relpath(i.path, "input path")
        if ("in", path) in seen:
            raise InvalidRequest(f"input path {path!r} is given twice")
        seen.add(("in", path))
        sources = [bool(i.url), i.data is not None, bool(i.task or i.output)]
        if sum(sources) != 1:
            raise InvalidRequest(f"input {path!r}: give exactly one of url, data, "
                                 "or task and output")
        expect = _check_sha(i.sha256, f"input {path!r}")
        if i.url:
            _check_url(i.url, f"input {path!r}")
            files.append(P.FileInfo(direction="in", path=path, url=i.url, expect_sha256=expect))
        elif i.data is not None:
            inline_total += len(i.data)
            if inline_total > inline_limit:
                raise LimitExceeded(
                    f"input {path!r}: {inline_total} bytes of inline inputs; the limit is "
                    f"{inline_limit} (give larger inputs a url)")
            digest = hashlib.sha256(i.data).hexdigest()
            if expect and expect != digest:
                raise InvalidRequest(f"input {path!r}: its data does not have the SHA-256 given")
            data[path] = i.data
            files.append(P.FileInfo(direction="in", path=path, state="inline",
                                    size=len(i.data), sha256=digest))
        else:
            if i.task <= 0 or not i.output:
                raise InvalidRequest(f"input {path!r}: a reference needs both task and output")
            output = check_relpath(i.output, "output name")
            refs.append(i.task)
            files.append(P.FileInfo(direction="in", path=path, task=i.task, output=output,
                                    expect_sha256=expect))
    for o in spec.outputs:
        path = check_relpath(o.path, "output path")
        if ("out", path) in seen:
            raise InvalidRequest(f"output path {path!r} is given twice")
        seen.add(("out", path))
        if o.url:
            _check_url(o.url, f"output {path!r}")
        files.append(P.FileInfo(direction="out", path=path, url=o.url))
    return files, data or None, refs


def _check_url(url: str, what: str) -> None:
    try:
        parse_url(url)
    except TransferError as exc:
        raise InvalidRequest(f"{what}: {exc.message} ({url[:200]!r})") from None


def _check_sha(value: str, what: str) -> str:
    if not value:
        return ""
    v = value.lower()
    if not _HEX64.fullmatch(v):
        raise InvalidRequest(f"{what}: sha256 must be 64 hexadecimal digits")
    return v


def task_workdir(workdir: str, task_id: int) -> str:
    """A task's work directory relative to the site's work root: its own, or tasks/<id>."""
    return workdir or f"tasks/{task_id}"


def workdir_of(t: LiveTask) -> str:
    return task_workdir(t.workdir, t.id)


def needs_agent(files: list[P.FileInfo] | None, direction: str) -> bool:
    """Whether the site's agent has something to move in ``direction``."""
    if not files:
        return False
    if direction == "in":
        return any(f.direction == "in" and f.state == "pending" for f in files)
    return any(f.direction == "out" and f.url and f.state == "pending" for f in files)


def resolve(fi: P.FileInfo, parent_files: list[P.FileInfo] | None, parent_data: bytes | None,
            *, parent_site: int, site: int, parent_workdir: str) -> tuple[P.FileInfo, bytes | None]:
    """A reference to a finished parent's output, made concrete. Raises InvalidRequest."""
    po = next((f for f in parent_files or [] if f.direction == "out" and f.path == fi.output),
              None)
    if po is None:
        raise InvalidRequest(f"input {fi.path!r}: task {fi.task} has no output {fi.output!r}")
    if po.url:
        return P.FileInfo(direction="in", path=fi.path, url=po.url, task=fi.task,
                          output=fi.output, expect_sha256=fi.expect_sha256 or po.sha256), None
    if po.state == "inline" and parent_data is not None:
        return P.FileInfo(direction="in", path=fi.path, task=fi.task, output=fi.output,
                          state="inline", size=len(parent_data), sha256=po.sha256), parent_data
    if po.state == "on_site":
        if parent_site != site:
            raise InvalidRequest(
                f"input {fi.path!r}: output {fi.output!r} of task {fi.task} stays on its own "
                "site (it has no url and is too large to come back inline); give it a url "
                "to use it on another site")
        return P.FileInfo(direction="in", path=fi.path, task=fi.task, output=fi.output,
                          site_path=f"{parent_workdir}/{po.path}",
                          expect_sha256=fi.expect_sha256 or po.sha256), None
    raise InvalidRequest(f"input {fi.path!r}: output {fi.output!r} of task {fi.task} "
                         f"is not available ({po.state})")


class Staging:
    """The controller's side of transfers: what agents must move, and what they report."""

    def __init__(self, c: Controller) -> None:
        self.c = c
        # Download requests relayed to agents: our req id -> (agent, client peer, client req id)
        self._reads: dict[int, tuple[Peer, Peer, int]] = {}
        self._next_read = 1

    # ------------------------------------------------------------------ to the agent

    def stage_of(self, t: LiveTask, direction: str) -> P.Stage | None:
        if not needs_agent(t.files, direction):
            return None
        items = [
            P.StageItem(path=f.path, url=f.url, site_path=f.site_path, sha256=f.expect_sha256)
            for f in t.files or []
            if f.direction == direction and f.state == "pending"
            and (direction == "in" or f.url)
        ]
        return P.Stage(task_id=t.id, direction="in" if direction == "in" else "out",
                       workdir=workdir_of(t), items=items)

    def push(self, t: LiveTask, direction: str) -> None:
        """Send a committed task's transfers to its site's agent, if connected."""
        stage = self.stage_of(t, direction)
        peer = self.c.batch.agents.get(t.site_id)
        if stage is not None and peer is not None:
            peer.send(P.StageWork(stages=[stage]))

    def agent_connected(self, site_id: int, peer: Peer) -> None:
        """Every transfer the site's agent owes, after its Jobs."""
        stages = []
        for t in self.c.live.values():
            if t.site_id != site_id or not t.files:
                continue
            direction = {S.READY: "in", S.RUN_DONE: "out"}.get(t.state)
            if direction is not None and (stage := self.stage_of(t, direction)) is not None:
                stages.append(stage)
        if stages:
            peer.send(P.StageWork(stages=stages))

    def cancelled(self, t: LiveTask, state_before: S) -> None:
        if state_before in (S.READY, S.RUN_DONE) and t.files:
            peer = self.c.batch.agents.get(t.site_id)
            if peer is not None:
                peer.send(P.Unstage(task_id=t.id))

    # ------------------------------------------------------------------ from the agent

    async def staged(self, site_id: int, peer: Peer, msg: P.Staged) -> None:
        c = self.c
        now = time.time()
        stmts: list[Write] = []
        touched = []
        for res in msg.results:
            t = c.live.get(res.task_id)
            want = S.READY if res.direction == "in" else S.RUN_DONE
            if t is None or t.site_id != site_id or t.state != want or not t.files:
                continue  # cancelled meanwhile, or a resend already applied
            by_path = {r.path: r for r in res.items}
            failed: list[str] = []
            files = []
            for f in t.files:
                r = by_path.get(f.path)
                if f.direction != res.direction or r is None or f.state != "pending":
                    files.append(f)
                    continue
                if r.ok:
                    files.append(_replace(f, state="done", size=r.size, sha256=r.sha256,
                                          attempts=r.attempts, error=""))
                else:
                    files.append(_replace(f, state="failed", attempts=r.attempts, error=r.error))
                    arrow = "from" if f.direction == "in" else "to"
                    where = f.url or f"{f.site_path} on the site"
                    failed.append(f"{'input' if f.direction == 'in' else 'output'} "
                                  f"{f.path!r} {arrow} {where}: {r.error}")
            t.files = files
            if not failed and needs_agent(t.files, res.direction):
                stmts.append(schema.update_task(t))  # some items still to come
                continue
            if failed:
                t.error = "; ".join(failed)[:4000]
                t.finished_at = now
                path = [S.FAILED]
                data: dict[str, Any] = {"reason": t.error}
            elif res.direction == "in":
                path, data = [S.STAGED_IN], {}
            else:
                path, data = [S.STAGED_OUT, S.JOB_FINISHED], {}
            s, events = c._transition(t, path, now, data)
            stmts.extend(s)
            touched.append((t, events, t.state))
        seq = msg.seq

        def committed() -> None:
            c._after_commit(touched)
            peer.send(P.Ack(seq=seq))

        await c._write(stmts, committed)

    # ------------------------------------------------------------------ downloads

    async def download(self, who: Principal, peer: Peer, msg: P.Download) -> None:
        c = self.c
        live, final = await c._owned(who, [msg.task_id])
        if msg.offset < 0 or msg.length <= 0:
            raise InvalidRequest("offset must be >= 0 and length > 0")
        length = min(msg.length, c.limits.max_inline_bytes)
        t = live.get(msg.task_id)
        files = (t.files if t is not None else final[msg.task_id].files) or []
        name = msg.path.strip("/")
        fi = next((f for f in files if f.direction == "out" and f.path == name), None)
        if fi is None:
            names = ", ".join(repr(f.path) for f in files if f.direction == "out") or "none"
            raise NotFound(f"task {msg.task_id} has no output {msg.path!r} (outputs: {names})")
        if fi.state == "inline":
            data = t.out_data.get(name) if t is not None and t.out_data else None
            if data is None:
                data = await c.store.output_data(msg.task_id, name)
                if data is None:
                    raise NotFound(f"output {name!r} of task {msg.task_id} is not stored")
            peer.send(P.FileData(req_id=msg.req_id, offset=msg.offset,
                                 data=data[msg.offset:msg.offset + length], size=len(data),
                                 sha256=fi.sha256))
            return
        if fi.state not in ("on_site", "done"):
            raise InvalidRequest(f"output {name!r} of task {msg.task_id} is not there "
                                 f"({fi.state}{': ' + fi.error if fi.error else ''})",
                                 "not_ready")
        site_id = t.site_id if t is not None else c.site_names.get(
            (who.user_id, final[msg.task_id].site), -1)
        agent = c.batch.agents.get(site_id)
        if agent is None:
            site = c.sites[site_id].name if site_id in c.sites else "?"
            raise InvalidRequest(f"output {name!r} is on site {site!r}, whose agent is not "
                                 "connected (`tidewater site start`)", "unavailable")
        workdir = (workdir_of(t) if t is not None
                   else task_workdir(final[msg.task_id].workdir, msg.task_id))
        rid = self._next_read
        self._next_read += 1
        self._reads[rid] = (agent, peer, msg.req_id)
        agent.send(P.ReadFile(req_id=rid, path=f"{workdir}/{name}", offset=msg.offset,
                              length=length))

    def file_chunk(self, msg: P.FileChunk) -> None:
        entry = self._reads.pop(msg.req_id, None)
        if entry is None:
            return
        _agent, peer, req_id = entry
        if msg.error:
            peer.send(P.Error(req_id=req_id, code=msg.code or "not_found", message=msg.error))
        else:
            peer.send(P.FileData(req_id=req_id, offset=msg.offset, data=msg.data,
                                 size=msg.size, sha256=msg.sha256))

    def agent_gone(self, peer: Peer) -> None:
        """Reads relayed through a departed agent get an error rather than no answer."""
        for rid, (agent, client, req_id) in list(self._reads.items()):
            if agent is not peer:
                continue
            del self._reads[rid]
            client.send(P.Error(req_id=req_id, code="unavailable",
                                message="the site's agent disconnected; try again"))


def _replace(f: P.FileInfo, **kw: Any) -> P.FileInfo:
    return msgspec.structs.replace(f, **kw)
