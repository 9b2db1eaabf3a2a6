"""Named row codecs: the one place that knows each table's column order.

Writes are built here (``insert_task(t)``, ``update_task(t)``,
``insert_event(...)``, ...) as :data:`~.base.Write` pairs, and rows read
back are turned into records here (``task_from_row``, ``job_from_row``, ...).
Both backends select the columns in the orders named below
(:data:`TASK_COLUMNS`, ...) and bind write parameters in the order of the
codec of the same name, so adding a column means editing this module and
each backend's migrations, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ... import proto as P
from ...states import TaskState
from ..model import (
    AppRec,
    Event,
    JobRec,
    LiveTask,
    PilotRow,
    StoredEvent,
    TokenRow,
    UserRow,
)
from .base import Op, SiteRow, Write

SCHEMA_VERSION = 9
"""Both backends migrate to this version (9: the exception a function task raised)."""

OP_ORDER: dict[Op, int] = {
    # Inside one commit: parents before children (users, sites, apps, jobs before
    # tokens and tasks), a job's old pilot tokens revoked before its new one is
    # inserted, a token revoked by id after it may have been inserted in the same
    # batch, tasks inserted before they are updated, updated before their events.
    Op.INSERT_USER: 0,
    Op.INSERT_SITE: 1,
    Op.UPSERT_APP: 2,
    Op.UPSERT_JOB: 3,
    Op.UPDATE_SITE_LIMITS: 4,
    Op.UPSERT_PILOT: 5,
    Op.REVOKE_JOB_TOKENS: 6,
    Op.DISABLE_USER: 7,
    Op.INSERT_TOKEN: 8,
    Op.REVOKE_TOKEN: 9,
    Op.REVOKE_USER_TOKENS: 9,
    Op.INSERT_TASK: 10,
    Op.INSERT_PARENT: 12,
    Op.UPSERT_DATA: 15,
    Op.UPDATE_TASK: 20,
    Op.REROUTE_TASK: 21,
    Op.INSERT_EVENT: 30,
    Op.INSERT_TAG: 40,
    Op.INSERT_SUBMISSION: 50,
    Op.INSERT_AUDIT: 60,
    Op.DELETE_PILOT: 70,
}

FINAL_STATES: tuple[str, ...] = ("JOB_FINISHED", "FAILED", "KILLED")

_json_enc = msgspec.json.Encoder()
_json_dec = msgspec.json.Decoder()
_files_enc = msgspec.msgpack.Encoder()
_files_dec = msgspec.msgpack.Decoder(list[P.FileInfo])
_params_dec = msgspec.json.Decoder(list[P.ParamSpec])
_hooks_dec = msgspec.json.Decoder(P.AppHooks)


def json_text(value: Any) -> str:
    return _json_enc.encode(value).decode()


def encode_files(files: list[P.FileInfo] | None) -> bytes | None:
    return _files_enc.encode(files) if files else None


def decode_files(blob: bytes | None) -> list[P.FileInfo] | None:
    return _files_dec.decode(blob) if blob else None


_exception_dec = msgspec.msgpack.Decoder(P.RemoteError)


def encode_exception(exc: P.RemoteError | None) -> bytes | None:
    return _files_enc.encode(exc) if exc is not None else None


def decode_exception(blob: bytes | None) -> P.RemoteError | None:
    """A stored function exception; None for none, or for a blob that does not decode
    (it only ever explains a failure, so it never stops a task from being read)."""
    if not blob:
        return None
    try:
        return _exception_dec.decode(blob)
    except msgspec.MsgspecError:
        return None


# ---------------------------------------------------------------------- tasks

TASK_COLUMNS: tuple[str, ...] = (
    "id", "owner_id", "site_id", "app", "state", "params", "tags", "priority", "cores", "gpus",
    "timeout", "max_retries", "retries", "attempt", "pilot", "argv", "shell", "env", "workdir",
    "exit_code", "error", "stdout_tail", "stderr_tail", "created_at", "started_at",
    "finished_at", "extra", "func", "args", "result", "files", "raised",
)
TASK_UPDATE_COLUMNS: tuple[str, ...] = (
    "state", "retries", "attempt", "pilot", "exit_code", "error", "stdout_tail", "stderr_tail",
    "started_at", "finished_at", "result", "files", "raised",
)
"""Columns ``update_task`` sets, in its parameter order; the task id comes last."""


def insert_task(t: LiveTask) -> Write:
    return (Op.INSERT_TASK, (
        t.id, t.owner_id, t.site_id, t.app, t.state.value, t.params_j, t.tags_j, t.priority,
        t.cores, t.gpus, t.timeout, t.max_retries, t.retries, t.attempt, t.pilot, t.argv_j,
        t.shell, t.env_j, t.workdir, t.exit_code, t.error, t.stdout_tail, t.stderr_tail,
        t.created_at, t.started_at, t.finished_at, t.extra_j, t.func, t.args, t.result,
        encode_files(t.files), encode_exception(t.exception),
    ))


def update_task(t: LiveTask) -> Write:
    return (Op.UPDATE_TASK, (
        t.state.value, t.retries, t.attempt, t.pilot, t.exit_code, t.error, t.stdout_tail,
        t.stderr_tail, t.started_at, t.finished_at, t.result, encode_files(t.files),
        encode_exception(t.exception), t.id,
    ))


def reroute_task(t: LiveTask) -> Write:
    """A queued task sent to another site: its site and the routes recorded in ``extra``."""
    return (Op.REROUTE_TASK, (t.site_id, t.extra_j, t.id))


def task_from_row(r: Sequence[Any]) -> LiveTask:
    """A task record from a row of :data:`TASK_COLUMNS`."""
    t = LiveTask(
        id=r[0], owner_id=r[1], site_id=r[2], app=r[3], state=TaskState(r[4]),
        params_j=r[5], tags_j=r[6], priority=r[7], cores=r[8], gpus=r[9], timeout=r[10],
        max_retries=r[11], retries=r[12], attempt=r[13], pilot=r[14], argv_j=r[15],
        shell=r[16], env_j=r[17], workdir=r[18], exit_code=r[19], error=r[20],
        stdout_tail=r[21], stderr_tail=r[22], created_at=r[23], started_at=r[24],
        finished_at=r[25], extra_j=r[26], func=r[27],
        args=bytes(r[28]) if r[28] is not None else None,
        result=bytes(r[29]) if r[29] is not None else None,
        files=decode_files(bytes(r[30]) if r[30] is not None else None),
        exception=decode_exception(bytes(r[31]) if r[31] is not None else None),
    )
    t.apply_extra()
    return t


def insert_event(task_id: int, e: Event, data_text: str | None = None) -> Write:
    """An event row; ``data_text``: ``e.data`` already encoded (the steps of one
    transition share their data, so it is encoded once)."""
    if data_text is None and e.data:
        data_text = json_text(e.data)
    return (Op.INSERT_EVENT, (e.id, task_id, e.src, e.dst, e.time, data_text))


EVENT_COLUMNS: tuple[str, ...] = ("id", "task_id", "from_state", "to_state", "time", "data")


def upsert_data(task_id: int, direction: str, path: str, data: bytes) -> Write:
    return (Op.UPSERT_DATA, (task_id, direction, path, data))


def insert_parent(child: int, parent: int) -> Write:
    return (Op.INSERT_PARENT, (child, parent))


def insert_tag(key: str, value: str, task_id: int, owner_id: int) -> Write:
    """A task's tag; the owner is kept with it so a listing by tag reads one owner's index."""
    return (Op.INSERT_TAG, (key, value, task_id, owner_id))


def insert_submission(owner_id: int, key: str, first: int, count: int, now: float) -> Write:
    return (Op.INSERT_SUBMISSION, (owner_id, key, json_text([first, count]), now))


def decode_submission(ids_text: str) -> tuple[int, int]:
    first, count = _json_dec.decode(ids_text)
    return int(first), int(count)


# ---------------------------------------------------------------------- sites and apps

SITE_COLUMNS: tuple[str, ...] = ("id", "owner_id", "name", "created_at", "limits")


def insert_site(site_id: int, owner_id: int, name: str, token_id: str, created_at: float
                ) -> Write:
    return (Op.INSERT_SITE, (site_id, owner_id, name, f"token:{token_id}", created_at))


def update_site_limits(site_id: int, limits: P.SiteLimits) -> Write:
    return (Op.UPDATE_SITE_LIMITS, (P.encode_json(limits), site_id))


APP_COLUMNS: tuple[str, ...] = (
    "site_id", "name", "command", "params", "description", "function", "hooks",
)


def upsert_app(a: AppRec, now: float) -> Write:
    return (Op.UPSERT_APP, (
        a.site_id, a.name, a.command, json_text(a.params), a.description, now, a.function,
        json_text(a.hooks) if a.hooks else "",
    ))


def app_from_row(r: Sequence[Any]) -> AppRec:
    return AppRec(site_id=r[0], name=r[1], command=r[2], params=_params_dec.decode(r[3]),
                  description=r[4], function=r[5],
                  hooks=_hooks_dec.decode(r[6]) if r[6] else None)


# ---------------------------------------------------------------------- batch jobs and pilots

JOB_COLUMNS: tuple[str, ...] = (
    "id", "site_id", "owner_id", "state", "nodes", "wall_time_min", "queue", "project",
    "scheduler_id", "autoscaled", "request_key", "created_at", "submitted_at", "started_at",
    "ended_at", "reason", "error", "token_hash",
)


def upsert_job(j: JobRec) -> Write:
    return (Op.UPSERT_JOB, (
        j.id, j.site_id, j.owner_id, j.state, j.nodes, j.wall_time_min, j.queue, j.project,
        j.scheduler_id, int(j.autoscaled), j.request_key, j.created_at, j.submitted_at,
        j.started_at, j.ended_at, j.reason, j.error, None,
    ))


def job_from_row(r: Sequence[Any]) -> JobRec:
    return JobRec(
        id=r[0], site_id=r[1], owner_id=r[2], state=r[3], nodes=r[4], wall_time_min=r[5],
        queue=r[6], project=r[7], scheduler_id=r[8], autoscaled=bool(r[9]),
        request_key=r[10], created_at=r[11], submitted_at=r[12], started_at=r[13],
        ended_at=r[14], reason=r[15], error=r[16],
    )


PILOT_COLUMNS: tuple[str, ...] = ("pilot_id", "site_id", "owner_id", "batch_job", "since")


def upsert_pilot(p: PilotRow, now: float) -> Write:
    return (Op.UPSERT_PILOT, (p.pilot_id, p.site_id, p.owner_id, p.batch_job, now))


def delete_pilot(pilot_id: str) -> Write:
    return (Op.DELETE_PILOT, (pilot_id,))


def pilot_from_row(r: Sequence[Any]) -> PilotRow:
    return PilotRow(pilot_id=r[0], site_id=r[1], owner_id=r[2], batch_job=r[3])


# ---------------------------------------------------------------------- users, tokens, audit

USER_COLUMNS: tuple[str, ...] = ("id", "name", "is_admin", "created_at", "disabled_at")


def insert_user(user_id: int, name: str, token_id: str, now: float, admin: bool) -> Write:
    return (Op.INSERT_USER, (user_id, name, f"token:{token_id}", now, int(admin)))


def user_from_row(r: Sequence[Any]) -> UserRow:
    return UserRow(id=r[0], name=r[1], is_admin=bool(r[2]), created_at=r[3], disabled_at=r[4])


def disable_user(user_id: int, now: float) -> Write:
    return (Op.DISABLE_USER, (now, user_id))


TOKEN_COLUMNS: tuple[str, ...] = (
    "id", "kind", "user_id", "site_id", "batch_job", "salt", "hash", "name", "created_at",
    "expires_at", "revoked_at",
)


def insert_token(t: TokenRow) -> Write:
    return (Op.INSERT_TOKEN, (t.id, t.kind, t.user_id, t.site_id, t.batch_job, t.salt, t.hash,
                              t.name, t.created_at, t.expires_at, t.revoked_at))


def token_from_row(r: Sequence[Any]) -> TokenRow:
    return TokenRow(id=r[0], kind=r[1], user_id=r[2], site_id=r[3], batch_job=r[4], salt=r[5],
                    hash=r[6], name=r[7], created_at=r[8], expires_at=r[9], revoked_at=r[10])


def revoke_token(token_id: str, now: float) -> Write:
    return (Op.REVOKE_TOKEN, (now, token_id))


def revoke_job_tokens(job_id: int, now: float) -> Write:
    return (Op.REVOKE_JOB_TOKENS, (now, job_id))


def revoke_user_tokens(user_id: int, now: float) -> Write:
    return (Op.REVOKE_USER_TOKENS, (now, user_id))


AUDIT_COLUMNS: tuple[str, ...] = (
    "id", "time", "user", "token_id", "remote", "action", "object", "detail",
)


def insert_audit(user_id: int | None, user: str, token_id: str, remote: str, action: str,
                 obj: str, detail: dict[str, Any], now: float | None = None) -> Write:
    return (Op.INSERT_AUDIT, (time.time() if now is None else now, user_id, user, token_id,
                              remote, action, obj, json_text(detail)))


STORED_EVENT_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, "tags")
"""An event with its task's tags (``tags`` is the task's column), for watch replay."""


def stored_event_from_row(r: Sequence[Any]) -> StoredEvent:
    """An event read back from a row of :data:`STORED_EVENT_COLUMNS`."""
    return StoredEvent(id=r[0], task_id=r[1], src=r[2], dst=r[3], time=r[4],
                       data=_json_dec.decode(r[5]) if r[5] else {}, tags=_json_dec.decode(r[6]))


INSERT_COLUMNS: dict[Op, tuple[str, ...]] = {
    # The columns each inserting codec binds, in its parameter order.
    Op.INSERT_USER: ("id", "name", "token_hash", "created_at", "is_admin"),
    Op.INSERT_SITE: ("id", "owner_id", "name", "token_hash", "created_at"),
    Op.UPSERT_APP: ("site_id", "name", "command", "params", "description", "created_at",
                    "function", "hooks"),
    Op.UPSERT_JOB: JOB_COLUMNS,
    Op.UPSERT_PILOT: PILOT_COLUMNS,
    Op.INSERT_TOKEN: TOKEN_COLUMNS,
    Op.INSERT_TASK: TASK_COLUMNS,
    Op.INSERT_PARENT: ("child", "parent"),
    Op.UPSERT_DATA: ("task_id", "direction", "path", "data"),
    Op.INSERT_EVENT: EVENT_COLUMNS,
    Op.INSERT_TAG: ("key", "value", "task_id", "owner_id"),
    Op.INSERT_SUBMISSION: ("owner_id", "key", "ids", "created_at"),
    Op.INSERT_AUDIT: ("time", "user_id", "user", "token_id", "remote", "action", "object",
                      "detail"),
}
"""The other ops bind ``(value, key)`` pairs: UPDATE_TASK binds :data:`TASK_UPDATE_COLUMNS`
then the id; REROUTE_TASK ``(site id, extra, id)``; the revocations and DISABLE_USER ``(now, id)``; UPDATE_SITE_LIMITS
``(limits, site id)``; DELETE_PILOT ``(pilot id,)``."""

def site_from_row(r: Sequence[Any]) -> SiteRow:
    """A site from a row of :data:`SITE_COLUMNS`."""
    return SiteRow(id=r[0], owner_id=r[1], name=r[2], created_at=r[3], limits_json=r[4])


def columns(names: Sequence[str], prefix: str = "") -> str:
    """``a, b, c`` (or ``p.a, p.b, p.c``) for a SELECT in a codec's order."""
    return ", ".join(f"{prefix}{n}" for n in names)
