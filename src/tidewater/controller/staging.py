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

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from .. import proto as P
from ..errors import InvalidRequest, NotFound
from ..states import TaskState as S
from .effects import Out, Send
from .model import LiveTask

log = logging.getLogger("tidewater.controller")

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
    """Transfers the site agents owe, and downloads relayed through them. Pure.

    What moves is decided from a task's files; the facade performs the
    transitions the results imply. Agents and clients are connection ids.
    """

    def __init__(self) -> None:
        # Download requests relayed to agents: our req id -> (agent, client, client req id)
        self._reads: dict[int, tuple[int, int, int]] = {}
        self._next_read = 1

    # ------------------------------------------------------------------ to the agent

    @staticmethod
    def stage_of(t: LiveTask, direction: str) -> P.Stage | None:
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

    def push(self, t: LiveTask, direction: str, agent: int | None) -> list[Out]:
        """A committed task's transfers, for its site's agent if connected."""
        stage = self.stage_of(t, direction)
        if stage is None or agent is None:
            return []
        return [Send(agent, P.StageWork(stages=[stage]))]

    def owed(self, tasks: Iterable[LiveTask], site_id: int, agent: int) -> list[Out]:
        """Every transfer the site's agent owes, after its Jobs."""
        stages = []
        for t in tasks:
            if t.site_id != site_id or not t.files:
                continue
            direction = {S.READY: "in", S.RUN_DONE: "out"}.get(t.state)
            if direction is not None and (stage := self.stage_of(t, direction)) is not None:
                stages.append(stage)
        return [Send(agent, P.StageWork(stages=stages))] if stages else []

    @staticmethod
    def cancelled(t: LiveTask, state_before: S, agent: int | None) -> list[Out]:
        if state_before in (S.READY, S.RUN_DONE) and t.files and agent is not None:
            return [Send(agent, P.Unstage(task_id=t.id))]
        return []

    # ------------------------------------------------------------------ from the agent

    @staticmethod
    def apply(t: LiveTask, res: P.StageResult, now: float
              ) -> tuple[list[S], dict[str, Any]] | None:
        """Record one stage result on ``t``'s files; the path it implies (None: more to come).

        The caller checked that ``t`` is on the agent's site and in the state
        the result is for.
        """
        by_path = {r.path: r for r in res.items}
        failed: list[str] = []
        files = []
        for f in t.files or []:
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
            return None
        if failed:
            t.error = "; ".join(failed)[:4000]
            t.finished_at = now
            return [S.FAILED], {"reason": t.error}
        if res.direction == "in":
            return [S.STAGED_IN], {}
        return [S.STAGED_OUT, S.JOB_FINISHED], {}

    # ------------------------------------------------------------------ downloads

    def download(self, msg: P.Download, t: LiveTask, *, live: bool, stored: bytes | None,
                 agent: int | None, site_name: str, peer: int, inline_limit: int) -> list[Out]:
        """Answer a Download of ``t``'s output: inline bytes now, or a read relayed to the agent.

        ``stored``: the output's inline bytes as read from the store (for a
        task no longer in memory). Raises InvalidRequest / NotFound saying why not.
        """
        if msg.offset < 0 or msg.length <= 0:
            raise InvalidRequest("offset must be >= 0 and length > 0")
        length = min(msg.length, inline_limit)
        files = t.files or []
        name = msg.path.strip("/")
        fi = next((f for f in files if f.direction == "out" and f.path == name), None)
        if fi is None:
            names = ", ".join(repr(f.path) for f in files if f.direction == "out") or "none"
            raise NotFound(f"task {msg.task_id} has no output {msg.path!r} (outputs: {names})")
        if fi.state == "inline":
            data = t.out_data.get(name) if live and t.out_data else None
            data = data if data is not None else stored
            if data is None:
                raise NotFound(f"output {name!r} of task {msg.task_id} is not stored")
            return [Send(peer, P.FileData(req_id=msg.req_id, offset=msg.offset,
                                          data=data[msg.offset:msg.offset + length],
                                          size=len(data), sha256=fi.sha256))]
        if fi.state not in ("on_site", "done"):
            raise InvalidRequest(f"output {name!r} of task {msg.task_id} is not there "
                                 f"({fi.state}{': ' + fi.error if fi.error else ''})",
                                 "not_ready")
        if agent is None:
            raise InvalidRequest(f"output {name!r} is on site {site_name!r}, whose agent is not "
                                 "connected (`tidewater site start`)", "unavailable")
        return self.relay_read(agent, peer, msg.req_id, f"{workdir_of(t)}/{name}", msg.offset,
                               length)

    def relay_read(self, agent: int, peer: int, req_id: int, path: str, offset: int,
                   length: int) -> list[Out]:
        """Ask ``agent`` for part of ``path`` (under its work root) for client ``peer``;
        its FileChunk comes back through :meth:`file_chunk` as FileData or an Error."""
        rid = self._next_read
        self._next_read += 1
        self._reads[rid] = (agent, peer, req_id)
        return [Send(agent, P.ReadFile(req_id=rid, path=path, offset=offset, length=length))]

    def file_chunk(self, msg: P.FileChunk) -> list[Out]:
        entry = self._reads.pop(msg.req_id, None)
        if entry is None:
            return []
        _agent, peer, req_id = entry
        if msg.error:
            return [Send(peer, P.Error(req_id=req_id, code=msg.code or "not_found",
                                       message=msg.error))]
        return [Send(peer, P.FileData(req_id=req_id, offset=msg.offset, data=msg.data,
                                      size=msg.size, sha256=msg.sha256))]

    def agent_gone(self, agent: int) -> list[Out]:
        """Reads relayed through a departed agent get an error rather than no answer."""
        out: list[Out] = []
        for rid, (via, client, req_id) in list(self._reads.items()):
            if via != agent:
                continue
            del self._reads[rid]
            out.append(Send(client, P.Error(req_id=req_id, code="unavailable",
                                            message="the site's agent disconnected; try again")))
        return out


def _replace(f: P.FileInfo, **kw: Any) -> P.FileInfo:
    return msgspec.structs.replace(f, **kw)
