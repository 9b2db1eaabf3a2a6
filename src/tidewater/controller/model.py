"""The controller's records: what it keeps of users, sites, apps, tasks and batch jobs.

Plain data, no behaviour beyond derived views. The books (``tasks``,
``pilots``, ``jobs``, ...) own collections of these; the store turns them
into rows and back through the named codecs of :mod:`.store.schema`, the one
place that knows column order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from .. import proto as P
from ..states import TaskState as S

_json_dec = msgspec.json.Decoder()


@dataclass
class Principal:
    """Who sent a request: the token's owner, narrowed by a site or pilot token."""

    user_id: int
    user: str
    site_id: int | None = None  # set when authenticated by a site or pilot token
    batch_job: int = 0  # set when authenticated by a pilot token
    token_id: str = ""
    expires_at: float | None = None
    is_admin: bool = False
    remote: str = ""


@dataclass
class SiteRec:
    id: int
    owner_id: int
    name: str
    created_at: float


@dataclass
class AppRec:
    site_id: int
    name: str
    command: str
    params: list[P.ParamSpec]
    description: str
    function: str = ""
    hooks: P.AppHooks | None = None


_COLD: dict[str, Any] = {
    # Fields most queued tasks leave at these defaults, kept apart (see LiveTask).
    "timeout": None, "max_retries": 3, "retries": 0, "attempt": 0, "pilot": "",
    "shell": "", "env_j": "{}", "workdir": "", "exit_code": None, "error": "",
    "stdout_tail": "", "stderr_tail": "", "started_at": None, "finished_at": None,
    "num_nodes": 1, "packing": 0, "wall_time": None, "waiting": 0, "func": "",
    "args": None, "result": None, "extra_j": "", "files": None, "in_data": None,
    "out_data": None, "exception": None, "parent_ids": None,
}
_HOT = ("id", "owner_id", "site_id", "app", "state", "params_j", "tags_j", "priority",
        "cores", "gpus", "argv_j", "created_at")


class _Cold:
    """A task's fields that are not at their defaults: made on the first such write."""

    __slots__ = tuple(_COLD)

    def __init__(self) -> None:
        for name, default in _COLD.items():
            setattr(self, name, default)


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def _cold_field(name: str, default: Any) -> property:
    slot = _Cold.__dict__[name]  # the member descriptor: faster than getattr by name
    get_slot, set_slot = slot.__get__, slot.__set__

    def get(self: LiveTask) -> Any:
        cold = self._cold
        return default if cold is None else get_slot(cold, _Cold)

    def put(self: LiveTask, value: Any) -> None:
        cold = self._cold
        if cold is None:
            if _is_default(value, default):
                return
            cold = self._cold = _Cold()
        set_slot(cold, value)

    return property(get, put, doc=f"(default {default!r} while unset)")


class LiveTask:
    """A task as the controller holds it (every task not yet final lives in memory).

    Parameters, tags, argv and environment stay as the JSON text that is
    stored (texts that repeat shared, see :meth:`.tasks.TaskTable.share`): a
    fraction of the size of dicts and lists, decoded only when a task is
    sent, reported or watched.

    Memory: a million tasks may wait in memory, so a task holds only the
    fields every queued task needs in slots of its own (:data:`_HOT`); the
    others (:data:`_COLD`: retries, pilot, results, files, launch options,
    ...) read as their defaults until one is set to something else, which
    makes the task a :class:`_Cold` record of them. A queued task with
    defaults is 136 bytes instead of 328. Reading and writing them is as for
    any attribute.
    """

    __slots__ = (*_HOT, "_cold")

    id: int
    owner_id: int
    site_id: int
    app: str
    state: S
    params_j: str
    tags_j: str
    priority: int
    cores: int
    gpus: int
    argv_j: str
    created_at: float
    _cold: _Cold | None
    if TYPE_CHECKING:  # properties made below, one per field of _COLD
        timeout: float | None
        max_retries: int
        retries: int
        attempt: int
        pilot: str
        shell: str
        env_j: str
        workdir: str
        exit_code: int | None
        error: str
        stdout_tail: str
        stderr_tail: str
        started_at: float | None
        finished_at: float | None
        num_nodes: int
        packing: int
        wall_time: float | None
        waiting: int
        """Parents not yet finished (in AWAITING_PARENTS)."""
        func: str
        args: bytes | None
        result: bytes | None
        extra_j: str
        """Launch resources and wall time, as stored JSON, when any differs from its default."""
        files: list[P.FileInfo] | None
        """Inputs and outputs with their transfer state (None: the task has none)."""
        in_data: dict[str, bytes] | None
        """Inline inputs' bytes, sent with the task to its pilot."""
        out_data: dict[str, bytes] | None
        """Inline outputs' bytes from the last report, for children referring to them."""
        exception: P.RemoteError | None
        """A function task: what its function raised in the last attempt that ended in error."""
        parent_ids: list[int] | None
        """The task's parents, ascending (None: it has none, or they were not read)."""

    def __init__(
        self, *, id: int, owner_id: int, site_id: int, app: str, state: S, params_j: str,
        tags_j: str, priority: int, cores: int, gpus: int, timeout: float | None,
        max_retries: int, retries: int, attempt: int, pilot: str, argv_j: str, shell: str,
        env_j: str, workdir: str, exit_code: int | None, error: str, stdout_tail: str,
        stderr_tail: str, created_at: float, started_at: float | None,
        finished_at: float | None, num_nodes: int = 1, packing: int = 0,
        wall_time: float | None = None, waiting: int = 0, func: str = "",
        args: bytes | None = None, result: bytes | None = None, extra_j: str = "",
        files: list[P.FileInfo] | None = None, in_data: dict[str, bytes] | None = None,
        out_data: dict[str, bytes] | None = None, exception: P.RemoteError | None = None,
        parent_ids: list[int] | None = None,
    ) -> None:
        self.id, self.owner_id, self.site_id, self.app = id, owner_id, site_id, app
        self.state, self.params_j, self.tags_j, self.priority = state, params_j, tags_j, priority
        self.cores, self.gpus, self.argv_j, self.created_at = cores, gpus, argv_j, created_at
        self._cold = None
        cold = (timeout, max_retries, retries, attempt, pilot, shell, env_j, workdir,
                exit_code, error, stdout_tail, stderr_tail, started_at, finished_at, num_nodes,
                packing, wall_time, waiting, func, args, result, extra_j, files, in_data,
                out_data, exception, parent_ids)
        for (name, default), value in zip(_COLD.items(), cold, strict=True):
            if not _is_default(value, default):
                setattr(self, name, value)

    def _fields(self) -> tuple[Any, ...]:
        return (*(getattr(self, n) for n in _HOT), *(getattr(self, n) for n in _COLD))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LiveTask):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in (*_HOT, *_COLD))
        return f"LiveTask({shown})"

    @property
    def task_id(self) -> int:
        return self.id

    @property
    def params(self) -> dict[str, Any]:
        return _json_dec.decode(self.params_j)  # type: ignore[no-any-return]

    @property
    def tags(self) -> dict[str, str]:
        return _json_dec.decode(self.tags_j)  # type: ignore[no-any-return]

    @property
    def argv(self) -> list[str]:
        return _json_dec.decode(self.argv_j)  # type: ignore[no-any-return]

    @property
    def env(self) -> dict[str, str]:
        return _json_dec.decode(self.env_j)  # type: ignore[no-any-return]

    @property
    def extra(self) -> dict[str, Any]:
        return _json_dec.decode(self.extra_j) if self.extra_j else {}

    def apply_extra(self) -> None:
        """Set the launch fields kept in ``extra_j`` (after a task is read back)."""
        extra = self.extra
        self.num_nodes = int(extra.get("num_nodes", 1))
        self.packing = int(extra.get("node_packing_count", 0))
        self.wall_time = extra.get("wall_time")


for _name, _default in _COLD.items():
    setattr(LiveTask, _name, _cold_field(_name, _default))


# A running job whose pilots have not connected after this long is flagged in `queue ls`.
NO_PILOT_FLAG_AFTER = 120.0


@dataclass
class JobRec:
    """A batch job: asked for by a user or an autoscaler, submitted by the site's agent."""

    id: int
    site_id: int
    owner_id: int
    state: str
    nodes: int
    wall_time_min: int
    queue: str
    project: str
    created_at: float
    scheduler_id: str = ""
    autoscaled: bool = False
    request_key: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    reason: str = ""
    error: str = ""
    token_id: str = ""
    """The pilot token of the job (revoked when it ends)."""
    pilots: set[str] = field(default_factory=set)
    seen_pilot: bool = False
    first_pilot_at: float | None = None
    first_pilot_process_at: float | None = None

    def flag(self, now: float) -> str:
        if (
            self.state == "running" and not self.seen_pilot and self.started_at is not None
            and now - self.started_at > NO_PILOT_FLAG_AFTER
        ):
            return f"running for {now - self.started_at:.0f} s and no pilot has connected"
        if self.state == "finished" and not self.seen_pilot and self.started_at is not None:
            return "ended without any pilot connecting (see the job's output file)"
        return ""


@dataclass(frozen=True)
class PilotRow:
    """A pilot the controller has welcomed and not yet let go (stored, for restarts)."""

    pilot_id: str
    site_id: int
    owner_id: int
    batch_job: int = 0


class Event(NamedTuple):
    """An event row as kept until commit."""

    id: int
    src: str
    dst: str
    time: float
    data: dict[str, Any]


@dataclass(frozen=True)
class TokenRow:
    id: str
    kind: str
    user_id: int
    site_id: int | None
    batch_job: int | None
    salt: str
    hash: str
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class UserRow:
    id: int
    name: str
    is_admin: bool
    created_at: float
    disabled_at: float | None


@dataclass(frozen=True)
class StoredEvent:
    """An event read back from the store, with its task's tags (for watch replay)."""

    id: int
    task_id: int
    src: str
    dst: str
    time: float
    data: dict[str, Any]
    tags: dict[str, str]
