"""Every refusal a submission can meet, checked before anything is stored. Pure.

A user learns at submit, not hours later, that a task or batch job can
never run: an unknown app, parameters that do not fit the app, resources no
node of the site has, a wall time longer than the site's batch jobs, a work
directory or transfer path that would leave the task's directory, a URL no
backend can fetch. Each check raises an :class:`~tidewater.errors.InvalidRequest`
subclass whose message names the input and says what to do; nothing here
reads the store or the clock (``now`` is an argument) or knows a connection.

What the caller resolves first (the site by name, the app by site and name,
the site's limits as its agent last sent them) comes in as arguments; the
caller also interns the JSON text of tags and environments it keeps.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import msgspec

from .. import apps as appmod
from .. import proto as P
from ..config import Limits
from ..errors import AppError, InvalidRequest, LimitExceeded, ParamError, TransferError
from ..paths import check_relpath
from ..states import TaskState
from ..urls import parse_url
from .model import AppRec, LiveTask, SiteRec

MAX_PARENTS = 10_000
"""Parents (named and referenced) one task may wait for."""
MAX_FILES = 1000
"""Inputs and outputs of one task, together."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
_json_enc = msgspec.json.Encoder()


def _j(value: Any) -> str:
    return _json_enc.encode(value).decode()


# ---------------------------------------------------------------------- a Submit as a whole


def check_submit(msg: P.Submit, limits: Limits) -> None:
    """Refuse a Submit with no tasks (InvalidRequest) or more than one may carry (LimitExceeded)."""
    if not msg.tasks:
        raise InvalidRequest("Submit carries no tasks")
    if len(msg.tasks) > limits.max_tasks_per_submit:
        raise LimitExceeded(
            f"{len(msg.tasks)} tasks in one Submit; the limit is "
            f"{limits.max_tasks_per_submit} (the client splits larger batches)"
        )


def check_parent_count(i: int, n: int) -> None:
    """Refuse task ``i`` of a Submit waiting for ``n`` parents, over :data:`MAX_PARENTS`.

    Raises LimitExceeded.
    """
    if n > MAX_PARENTS:
        raise LimitExceeded(f"task {i}: {n} parents; the limit is {MAX_PARENTS}")


def task_error(index: int, exc: InvalidRequest) -> InvalidRequest:
    """``exc`` again, its message prefixed with the task it is about (``task 3: ...``).

    The first task of a Submit (index 0) is just ``task``. Callers use it for
    refusals found outside :func:`prepare_task` too (an unknown site), so a
    user reads every refusal of one task the same way.
    """
    where = f"task {index}" if index else "task"
    return type(exc)(f"{where}: {exc.message}", exc.code)


# ---------------------------------------------------------------------- one task


def footprint(res: P.Resources) -> tuple[int, int]:
    """The (cores, GPUs) a task takes on each of its nodes.

    A rank takes its threads' cores and its GPUs, so a node holding
    ``ranks_per_node`` ranks needs at least that many; ``cores`` and
    ``gpus`` ask for more directly.
    """
    cores = max(res.cores, res.ranks_per_node * res.threads_per_rank)
    gpus = max(res.gpus, res.ranks_per_node * res.gpus_per_rank)
    return cores, gpus


def prepare_task(
    spec: P.TaskSpec, *, index: int, owner_id: int, site: SiteRec, app: AppRec | None,
    app_names: list[str], limits: Limits, site_limits: P.SiteLimits | None, now: float,
) -> tuple[LiveTask, list[int]]:
    """Check task ``index`` of a Submit and build its record (id 0, state CREATED).

    ``site`` is the task's site, already resolved for its owner; ``app`` the
    app of that name on it, or None (``app_names`` are the site's apps, named
    in the refusal); ``site_limits`` what the site's agent last said its
    scheduler allows. Returns the task and the ids of the tasks whose outputs
    its inputs refer to (they become parents).

    Raises the InvalidRequest subclass of the first refusal (AppError,
    ParamError, LimitExceeded, or InvalidRequest itself), its message
    prefixed with ``task <index>:`` as :func:`task_error` does.
    """
    try:
        if app is None:
            raise AppError(
                f"unknown app {spec.app!r} on site {site.name!r} "
                f"(registered: {', '.join(sorted(app_names)) or 'none'})"
            )
        # Arguments and inline inputs have their own limit (max_inline_bytes).
        size = len(P.encode(spec)) - len(spec.args) - sum(
            len(i.data) for i in spec.inputs if i.data)
        if size > limits.max_params_bytes:
            raise LimitExceeded(
                f"{size} bytes of parameters, tags and environment; the limit is "
                f"{limits.max_params_bytes} (pass large data as files)"
            )
        if app.function:
            if spec.params:
                raise ParamError(f"app {app.name!r} is a Python function: pass args, "
                                 "not params")
            if len(spec.args) > limits.max_inline_bytes:
                raise LimitExceeded(
                    f"{len(spec.args)} bytes of arguments; the limit is "
                    f"{limits.max_inline_bytes} (pass large data as files)")
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
        check_task_fits(site.name, res, site_limits, spec.wall_time)
        _check_options(spec)
        workdir = check_workdir(spec.workdir) if spec.workdir else ""
        files, in_data, refs = check_files(spec, limits.max_inline_bytes)
    except InvalidRequest as exc:
        raise task_error(index, exc) from None
    cores, gpus = footprint(res)
    return LiveTask(
        id=0, owner_id=owner_id, site_id=site.id, app=app.name, state=TaskState.CREATED,
        params_j=_j(values), tags_j=_j(spec.tags), priority=spec.priority,
        cores=cores, gpus=gpus, timeout=spec.timeout,
        max_retries=spec.max_retries, retries=0, attempt=0, pilot="",
        argv_j=_j(argv), shell=shell, env_j=_j(spec.env),
        workdir=workdir, exit_code=None, error="",
        stdout_tail="", stderr_tail="", created_at=now, started_at=None, finished_at=None,
        num_nodes=res.num_nodes, packing=res.node_packing_count, wall_time=spec.wall_time,
        func=app.function, args=spec.args if app.function else None,
        extra_j=_j(extra) if extra else "", files=files, in_data=in_data,
    ), refs


def _check_options(spec: P.TaskSpec) -> None:
    """Retries, timeout, environment names, and NUL bytes in env and tags."""
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


def check_workdir(path: str) -> str:
    """A task work directory, normalised: relative, never leaving the site's work root.

    Raises InvalidRequest for an absolute path, ``~``, ``..``, an empty path,
    a NUL byte or more than 1024 characters.
    """
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
    """The launch fields that differ from their defaults (and the wall time, if given).

    Raises InvalidRequest for fewer than one core, negative GPUs, a launch
    field out of its range (0 or 1 to 100000), or a wall time that is not a
    positive number of seconds.
    """
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


def check_task_fits(site: str, res: P.Resources, limits: P.SiteLimits | None,
                    wall_time: float | None = None) -> None:
    """Refuse a task no node or batch job of site ``site`` can ever hold.

    Nothing is checked while the site's limits are unknown (``None``) or for
    a limit the agent did not send. Raises InvalidRequest naming the limit.
    """
    if limits is None:
        return
    if (
        wall_time is not None and limits.max_wall_time_min is not None
        and wall_time > limits.max_wall_time_min * 60
    ):
        raise InvalidRequest(
            f"wall_time {wall_time:g} s is longer than the {limits.max_wall_time_min} min "
            f"batch jobs of site {site!r} may last"
        )
    cores, gpus = footprint(res)
    if limits.cores_per_node is not None and cores > limits.cores_per_node:
        raise InvalidRequest(
            f"needs {cores} cores per node; nodes of site {site!r} have "
            f"{limits.cores_per_node} (lower ranks_per_node/threads_per_rank or use more nodes)"
        )
    if limits.gpus_per_node is not None and gpus > limits.gpus_per_node:
        raise InvalidRequest(
            f"needs {gpus} GPUs per node; nodes of site {site!r} have {limits.gpus_per_node}"
        )
    if limits.max_nodes_per_job is not None and res.num_nodes > limits.max_nodes_per_job:
        raise InvalidRequest(
            f"needs {res.num_nodes} nodes; site {site!r} allows at most "
            f"{limits.max_nodes_per_job} per batch job"
        )


# ---------------------------------------------------------------------- batch jobs


def check_job_spec(spec: P.JobSpec, limits: P.SiteLimits | None) -> None:
    """Refuse a batch job the site's scheduler would reject; say why (InvalidRequest).

    Nodes and wall time must be 1-100000, queue and project at most 128
    characters without line breaks or NUL; with the site's limits known,
    the queue and project must be allowed and the size within bounds.
    """
    if spec.nodes < 1 or spec.nodes > 100_000:
        raise InvalidRequest(f"nodes must be between 1 and 100000, not {spec.nodes}")
    if spec.wall_time_min < 1 or spec.wall_time_min > 100_000:
        raise InvalidRequest(f"wall time must be at least 1 minute, not {spec.wall_time_min}")
    for what, value in (("queue", spec.queue), ("project", spec.project)):
        if len(value) > 128 or any(c in value for c in "\n\r\x00"):
            raise InvalidRequest(f"invalid {what} {value!r}")
    if limits is None:
        return
    if limits.queues and spec.queue and spec.queue not in limits.queues:
        raise InvalidRequest(
            f"queue {spec.queue!r} is not allowed on site {spec.site!r} "
            f"(allowed: {', '.join(limits.queues)})"
        )
    if limits.projects and spec.project and spec.project not in limits.projects:
        raise InvalidRequest(
            f"project {spec.project!r} is not allowed on site {spec.site!r} "
            f"(allowed: {', '.join(limits.projects)})"
        )
    if limits.max_nodes_per_job is not None and spec.nodes > limits.max_nodes_per_job:
        raise InvalidRequest(
            f"{spec.nodes} nodes asked; site {spec.site!r} allows at most "
            f"{limits.max_nodes_per_job} per batch job"
        )
    if limits.max_wall_time_min is not None and spec.wall_time_min > limits.max_wall_time_min:
        raise InvalidRequest(
            f"wall time {spec.wall_time_min} min asked; site {spec.site!r} allows at most "
            f"{limits.max_wall_time_min} min"
        )


# ---------------------------------------------------------------------- inputs and outputs


def check_files(spec: P.TaskSpec, inline_limit: int) -> tuple[
    list[P.FileInfo] | None, dict[str, bytes] | None, list[int]
]:
    """A task's inputs and outputs as it keeps them, checked.

    Returns the file list (None without files), the inline inputs' bytes
    (None without any), and the tasks whose outputs are referenced (they
    become parents). Raises LimitExceeded for more than :data:`MAX_FILES`
    files or inline inputs over ``inline_limit`` bytes together, and
    InvalidRequest for a path leaving the work directory, a path given
    twice, an input without exactly one source, a URL no backend takes, or
    a SHA-256 that is malformed or does not match the inline data.
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
    """Refuse a transfer URL no backend takes: InvalidRequest with the backend's reason."""
    try:
        parse_url(url)
    except TransferError as exc:
        raise InvalidRequest(f"{what}: {exc.message} ({url[:200]!r})") from None


def _check_sha(value: str, what: str) -> str:
    """An expected SHA-256, lowercased (``""`` if none); InvalidRequest unless 64 hex digits."""
    if not value:
        return ""
    v = value.lower()
    if not _HEX64.fullmatch(v):
        raise InvalidRequest(f"{what}: sha256 must be 64 hexadecimal digits")
    return v
