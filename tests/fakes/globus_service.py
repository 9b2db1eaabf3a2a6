"""A stand-in for the Globus Transfer API (v0.10), served on a loopback port.

It speaks the part of the API that ``tidewater.agents.transfers.globus`` and
globus-sdk's ``TransferClient`` use, with Globus's JSON shapes::

    GET  /v0.10/submission_id
    POST /v0.10/transfer                          (a "transfer" document, DATA of transfer_item)
    GET  /v0.10/task/<id>
    POST /v0.10/task/<id>/cancel
    GET  /v0.10/task/<id>/successful_transfers    (marker paging)
    GET  /v0.10/task/<id>/skipped_errors          (marker paging)
    GET  /v0.10/task/<id>/event_list              (limit/offset paging, newest first)
    GET  /v0.10/operation/endpoint/<id>/stat?path=

Collections are local directories given at construction (``{collection id:
root}``); a collection path ``/a/b`` (or ``/~/a/b``) is ``root/a/b``, and a
path with a ``..`` component, or leading outside the root through a link, is
refused (403 on stat, PERMISSION_DENIED in a task). Every request needs
``Authorization: Bearer <token>``; anything else gets Globus's 401 body.

A submitted task is ACTIVE until it has copied every item, in order, in a
worker thread, then SUCCEEDED or FAILED. A missing or refused source path is
skipped (``skipped_errors``) when the task has ``skip_source_errors``, and
otherwise fails the task with a ``fatal_error`` and an error event, like
Globus; a refused destination fails the task at once (Globus would retry it
until the deadline, which is recorded but not enforced here). Set
:attr:`GlobusService.gate` to an unset ``anyio.Event`` to hold tasks ACTIVE
until it is set; :meth:`GlobusService.wait_for_tasks` waits for submissions.

Use::

    async with GlobusService({"site": site_root, "remote": remote_root}, token="t") as svc:
        ...  # TransferClient(base_url=svc.url, authorizer=AccessTokenAuthorizer("t"))
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import stat
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Self

import anyio
from aiohttp import web
from anyio.abc import TaskGroup

API = "/v0.10"
PAGE = 100  # items per page of successful_transfers / skipped_errors


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class Fault(Exception):
    """A task-time error, classified like Globus's events."""

    def __init__(self, code: str, description: str, details: str, *, source: bool) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details
        self.source = source


class Refused(Exception):
    """A collection path that leads outside its root."""


@dataclass
class FakeTask:
    task_id: str
    submission_id: str
    source_endpoint: str
    destination_endpoint: str
    items: list[dict[str, Any]]
    label: str | None
    verify_checksum: bool
    skip_source_errors: bool
    deadline: str | None
    status: str = "ACTIVE"
    nice_status: str | None = "Queued"
    fatal_error: dict[str, str] | None = None
    request_time: str = field(default_factory=now)
    completion_time: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    successful: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    directories: int = 0
    bytes_transferred: int = 0
    faults: int = 0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def event(self, code: str, description: str, details: str = "", *,
              is_error: bool = False) -> None:
        self.events.append({"DATA_TYPE": "event", "code": code, "is_error": is_error,
                            "description": description, "details": details, "time": now()})

    def finish(self, status: str, fatal: tuple[str, str] | None = None) -> None:
        if self.status != "ACTIVE":
            return
        self.status = status
        self.nice_status = None
        self.completion_time = now()
        if fatal is not None:
            self.fatal_error = {"code": fatal[0], "description": fatal[1]}
        self.event(status if status == "SUCCEEDED" else (fatal or ("FAILED",))[0],
                   "Task " + status.lower(), "")

    def doc(self) -> dict[str, Any]:
        done = self.status != "ACTIVE"
        return {
            "DATA_TYPE": "task", "task_id": self.task_id, "type": "TRANSFER",
            "status": self.status, "label": self.label, "command": "API 0.10",
            "fatal_error": self.fatal_error, "nice_status": self.nice_status,
            "nice_status_details": None, "nice_status_expires_in": None,
            "nice_status_short_description": self.nice_status,
            "is_ok": None if done else True, "is_paused": False,
            "request_time": self.request_time, "completion_time": self.completion_time,
            "deadline": self.deadline, "source_endpoint_id": self.source_endpoint,
            "destination_endpoint_id": self.destination_endpoint,
            "source_endpoint_display_name": self.source_endpoint,
            "destination_endpoint_display_name": self.destination_endpoint,
            "verify_checksum": self.verify_checksum,
            "skip_source_errors": self.skip_source_errors, "fail_on_quota_errors": False,
            "encrypt_data": False, "preserve_timestamp": False, "sync_level": None,
            "delete_destination_extra": False, "recursive_symlinks": "ignore",
            "files": self.files, "directories": self.directories, "symlinks": 0,
            "files_transferred": len(self.successful), "files_skipped": 0,
            "bytes_transferred": self.bytes_transferred, "bytes_checksummed":
                self.bytes_transferred if self.verify_checksum else 0,
            "effective_bytes_per_second": 0, "faults": self.faults,
            "subtasks_total": len(self.items),
            "subtasks_succeeded": len(self.items) - len(self.skipped) if done else 0,
            "subtasks_pending": 0 if done else len(self.items), "subtasks_retrying": 0,
            "subtasks_failed": 1 if self.status == "FAILED" else 0,
            "subtasks_canceled": 0, "subtasks_expired": 0,
            "subtasks_skipped_errors": len(self.skipped),
            "history_deleted": False, "canceled_by_admin": None,
            "canceled_by_admin_message": None, "filter_rules": None,
            "owner_id": "00000000-0000-0000-0000-000000000000", "username": "u_fake",
        }


class GlobusService:
    """The fake Transfer API; an async context manager owning its server and tasks."""

    def __init__(self, endpoints: Mapping[str, Path | str], *, token: str,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.endpoints = {k: Path(v) for k, v in endpoints.items()}
        self.token = token
        self.host = host
        self.port = port
        self.tasks: dict[str, FakeTask] = {}
        self.gate: anyio.Event | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._submissions: dict[str, str] = {}  # submission id -> task id ("" until used)
        self._changed = anyio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._tg: TaskGroup | None = None

    @property
    def url(self) -> str:
        """The API's root, for ``TransferClient(base_url=...)`` (paths carry /v0.10)."""
        return f"http://{self.host}:{self.port}/"

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._authenticate])
        app.add_routes([
            web.get(f"{API}/submission_id", self._submission_id),
            web.post(f"{API}/transfer", self._transfer),
            web.get(f"{API}/task/{{task_id}}", self._task),
            web.post(f"{API}/task/{{task_id}}/cancel", self._cancel),
            web.get(f"{API}/task/{{task_id}}/successful_transfers", self._successful),
            web.get(f"{API}/task/{{task_id}}/skipped_errors", self._skipped),
            web.get(f"{API}/task/{{task_id}}/event_list", self._event_list),
            web.get(f"{API}/operation/endpoint/{{endpoint_id}}/stat", self._stat),
        ])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def wait_for_tasks(self, n: int) -> list[FakeTask]:
        """The tasks submitted so far, once there are at least ``n``."""
        while len(self.tasks) < n:
            await self._changed.wait()
        return list(self.tasks.values())

    # ---------------------------------------------------------------- HTTP

    @web.middleware
    async def _authenticate(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        header = request.headers.get("Authorization", "")
        if not header:
            return error(request, 401, "AuthenticationFailed", "No Authorization header")
        if header != f"Bearer {self.token}":
            return error(request, 401, "AuthenticationFailed", "Token is not active")
        return await handler(request)

    async def _submission_id(self, request: web.Request) -> web.Response:
        sid = str(uuid.uuid4())
        self._submissions[sid] = ""
        return web.json_response({"DATA_TYPE": "submission_id", "value": sid})

    async def _transfer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error(request, 400, "ClientError.BadRequest", "The body is not JSON")
        if not isinstance(body, dict) or body.get("DATA_TYPE") != "transfer":
            return error(request, 400, "ClientError.BadRequest",
                         "Expected a document of DATA_TYPE 'transfer'")
        sid = body.get("submission_id")
        if sid not in self._submissions:
            return error(request, 400, "ClientError.BadRequest.InvalidSubmissionId",
                         f"Invalid submission id {sid!r}")
        if self._submissions[sid]:
            return web.json_response(result(request, "Duplicate", "A transfer with id "
                                            f"'{sid}' was already submitted", sid,
                                            self._submissions[sid]))
        for key in ("source_endpoint", "destination_endpoint"):
            if body.get(key) not in self.endpoints:
                return error(request, 404, "EndpointNotFound",
                             f"No such collection '{body.get(key)}'")
        items = body.get("DATA")
        if not isinstance(items, list) or not items:
            return error(request, 400, "ClientError.BadRequest.NoTransferItems",
                         "A transfer requires at least one item")
        for it in items:
            if (not isinstance(it, dict) or it.get("DATA_TYPE") != "transfer_item"
                    or not isinstance(it.get("source_path"), str)
                    or not isinstance(it.get("destination_path"), str)):
                return error(request, 400, "ClientError.BadRequest",
                             f"Invalid transfer_item {it!r}")
        task = FakeTask(
            task_id=str(uuid.uuid4()), submission_id=sid,
            source_endpoint=body["source_endpoint"],
            destination_endpoint=body["destination_endpoint"], items=items,
            label=body.get("label"), verify_checksum=bool(body.get("verify_checksum")),
            skip_source_errors=bool(body.get("skip_source_errors")),
            deadline=body.get("deadline"),
        )
        self._submissions[sid] = task.task_id
        self.tasks[task.task_id] = task
        self._changed.set()
        self._changed = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._execute, task)
        return web.json_response(
            result(request, "Accepted", "The transfer has been accepted and a task has been "
                   "created and queued for execution", sid, task.task_id), status=202)

    def _get_task(self, request: web.Request) -> FakeTask:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            raise web.HTTPNotFound(
                text=error_body(request, "TaskNotFound",
                                f"Task '{request.match_info['task_id']}' not found"),
                content_type="application/json")
        return task

    async def _task(self, request: web.Request) -> web.Response:
        return web.json_response(self._get_task(request).doc())

    async def _cancel(self, request: web.Request) -> web.Response:
        task = self._get_task(request)
        if task.status != "ACTIVE":
            return web.json_response({"DATA_TYPE": "result", "code": "TaskComplete",
                                      "message": "The task completed before it could be "
                                      "cancelled", "resource": request.path,
                                      "request_id": request_id()})
        task.scope.cancel()
        task.finish("FAILED", ("CANCELED", "The task was canceled by the user"))
        return web.json_response({"DATA_TYPE": "result", "code": "Canceled",
                                  "message": "The task has been cancelled successfully.",
                                  "resource": request.path, "request_id": request_id()})

    async def _successful(self, request: web.Request) -> web.Response:
        task = self._get_task(request)
        return web.json_response(marker_page(request, "successful_transfers", task.successful))

    async def _skipped(self, request: web.Request) -> web.Response:
        task = self._get_task(request)
        return web.json_response(marker_page(request, "skipped_errors", task.skipped))

    async def _event_list(self, request: web.Request) -> web.Response:
        task = self._get_task(request)
        limit = int(request.query.get("limit", "10"))
        offset = int(request.query.get("offset", "0"))
        events = list(reversed(task.events))
        page = events[offset: offset + limit]
        return web.json_response({"DATA_TYPE": "event_list", "DATA": page, "limit": limit,
                                  "offset": offset, "total": len(events),
                                  "length": len(page)})

    async def _stat(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint_id"]
        if endpoint not in self.endpoints:
            return error(request, 404, "EndpointNotFound", f"No such collection '{endpoint}'")
        path = request.query.get("path")
        if not path:
            return error(request, 400, "ClientError.BadRequest", "A path is required")
        try:
            local = self.resolve(endpoint, path)
        except Refused:
            return error(request, 403, "EndpointPermissionDenied",
                         f"Denied by endpoint, Error (list)\nEndpoint: {endpoint}\n"
                         f"Server: {self.host}:{self.port}\nCommand: MLST {path}\n"
                         "Message: Fatal FTP Response\n---\nDetails: 500 Command failed : "
                         "Path not allowed.\n")
        try:
            st = local.stat()
        except FileNotFoundError:
            return error(request, 404, "NotFound",
                         f"Path not found, Error (list)\nEndpoint: {endpoint}\n"
                         f"Server: {self.host}:{self.port}\nMessage: No such file or directory"
                         f"\n---\nDetails: Error: '{path}' not found\n")
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        return web.json_response({
            "DATA_TYPE": "file", "name": PurePosixPath(path).name, "type": kind,
            "size": st.st_size if kind == "file" else 4096,
            "permissions": f"{stat.S_IMODE(st.st_mode):04o}", "user": "fake", "group": "fake",
            "last_modified": dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
            .strftime("%Y-%m-%d %H:%M:%S+00:00"),
            "link_target": None, "link_group": None, "link_user": None, "link_size": None,
            "link_last_modified": None,
        })

    # ------------------------------------------------------------- copying

    def resolve(self, endpoint: str, path: str) -> Path:
        """A collection path as a local path under the collection's root; Refused if not."""
        root = self.endpoints[endpoint]
        rel = path[2:] if path.startswith("/~") else path
        parts = [p for p in PurePosixPath("/" + rel.lstrip("/")).parts[1:] if p != "."]
        if ".." in parts:
            raise Refused(path)
        local = root.joinpath(*parts)
        if not local.resolve().is_relative_to(root.resolve()):
            raise Refused(path)
        return local

    async def _execute(self, task: FakeTask) -> None:
        with task.scope:
            if self.gate is not None:
                await self.gate.wait()
            task.nice_status = "OK"
            task.event("STARTED", "Task started")
            for item in task.items:
                try:
                    await anyio.to_thread.run_sync(self._copy_item, task, item)
                except Fault as f:
                    task.faults += 1
                    task.event(f.code, f.description, f.details, is_error=True)
                    if f.source and task.skip_source_errors:
                        task.skipped.append({
                            "DATA_TYPE": "skipped_error", "source_path": item["source_path"],
                            "destination_path": item["destination_path"],
                            "error_code": f.code, "error_details": f.details,
                            "error_time": now(), "is_directory": bool(item.get("recursive")),
                            "is_symlink": False, "is_delete_destination_extra": False,
                            "checksum_algorithm": None, "external_checksum": None,
                        })
                        continue
                    task.finish("FAILED", (f.code, f.description))
                    return
            if task.skipped:
                task.event("SKIPPED_ERRORS", "Task encountered paths with skippable errors "
                           "and skipped them", f"{len(task.skipped)} paths skipped")
            task.finish("SUCCEEDED")

    def _copy_item(self, task: FakeTask, item: dict[str, Any]) -> None:
        """Copy one transfer_item (in a worker thread); Fault on the errors Globus reports."""
        src_path, dst_path = item["source_path"], item["destination_path"]
        try:
            src = self.resolve(task.source_endpoint, src_path)
        except Refused:
            raise Fault("PERMISSION_DENIED", "Permission denied",
                        details(task.source_endpoint, src_path, "Path not allowed."),
                        source=True) from None
        try:
            dst = self.resolve(task.destination_endpoint, dst_path)
        except Refused:
            raise Fault("PERMISSION_DENIED", "Permission denied",
                        details(task.destination_endpoint, dst_path, "Path not allowed."),
                        source=False) from None
        if not src.exists():
            raise Fault("FILE_NOT_FOUND", "No such file or directory",
                        details(task.source_endpoint, src_path, "No such file or directory"),
                        source=True)
        if item.get("recursive"):
            if not src.is_dir():
                raise Fault("NOT_A_DIRECTORY", "Not a directory",
                            details(task.source_endpoint, src_path, "Not a directory"),
                            source=False)
            task.directories += 1
            dst.mkdir(parents=True, exist_ok=True)
            for dirpath, dirnames, filenames in os.walk(src):
                d = Path(dirpath)
                rel_dir = d.relative_to(src)
                for name in dirnames:
                    task.directories += 1
                    (dst / rel_dir / name).mkdir(parents=True, exist_ok=True)
                for name in filenames:
                    rel = (rel_dir / name).as_posix()
                    self._copy_file(task, d / name, dst / rel_dir / name,
                                    f"{src_path.rstrip('/')}/{rel}",
                                    f"{dst_path.rstrip('/')}/{rel}")
            return
        if src.is_dir():
            raise Fault("IS_A_DIRECTORY", "Is a directory",
                        details(task.source_endpoint, src_path, "Is a directory"), source=False)
        dst.parent.mkdir(parents=True, exist_ok=True)
        self._copy_file(task, src, dst, src_path, dst_path)

    @staticmethod
    def _copy_file(task: FakeTask, src: Path, dst: Path, src_path: str, dst_path: str) -> None:
        shutil.copyfile(src, dst)
        task.files += 1
        task.bytes_transferred += dst.stat().st_size
        task.successful.append({"DATA_TYPE": "successful_transfer", "source_path": src_path,
                                "destination_path": dst_path})


# ------------------------------------------------------------------ documents


def request_id() -> str:
    return uuid.uuid4().hex[:9]


def error_body(request: web.Request, code: str, message: str) -> str:
    return json.dumps({"code": code, "message": message, "request_id": request_id(),
                       "resource": request.path})


def error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """A Globus error response (code, message, request_id, resource)."""
    return web.Response(status=status, text=error_body(request, code, message),
                        content_type="application/json")


def result(request: web.Request, code: str, message: str, sid: str,
           task_id: str) -> dict[str, Any]:
    return {
        "DATA_TYPE": "transfer_result", "code": code, "message": message,
        "request_id": request_id(), "resource": request.path, "submission_id": sid,
        "task_id": task_id,
        "task_link": {"DATA_TYPE": "link", "href": f"{API}/task/{task_id}?format=json",
                      "rel": "related", "resource": "task", "title": "related task"},
    }


def marker_page(request: web.Request, kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    marker = int(request.query.get("marker") or 0)
    page = rows[marker: marker + PAGE]
    more = marker + PAGE < len(rows)
    return {"DATA_TYPE": kind, "marker": marker,
            "next_marker": marker + PAGE if more else None, "DATA": page}


def details(endpoint: str, path: str, message: str) -> str:
    """An error event's details, shaped like Globus's."""
    return (f"Error (transfer)\nEndpoint: {endpoint}\nFile: {path}\n"
            f"Message: Fatal FTP Response\n---\n500 Command failed : {message}\n")
