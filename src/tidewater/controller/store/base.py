"""The store's contract: semantic writes in, typed records out.

The controller never writes SQL. It hands the store a list of
:data:`Write` values -- ``(Op, params)`` pairs made by the named codecs of
:mod:`.schema` (``schema.insert_task(t)``, ``schema.upsert_job(j)``, ...) --
together with an ``on_commit`` callback, and reads through the typed methods
of :class:`Store`. Each backend (:mod:`.sqlite`, :mod:`.postgres`) renders an
``Op`` to its own SQL and keeps its own errors inside: only
:class:`~tidewater.errors.StoreError` leaves it.

Ordering guarantee, for every backend: writes are committed in the order
they were queued (a queued write is never overtaken), several queued writes
may share one transaction (group commit), and the ``on_commit`` callbacks run
after that transaction committed, in queue order, followed by
``after_batch``. Inside one transaction, statements run grouped by
:class:`Op` in :data:`schema.OP_ORDER`; every update writes absolute
values, so the result equals running the writes one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ...states import TaskState
from ..model import AppRec, JobRec, LiveTask, PilotRow, StoredEvent, TokenRow, UserRow


class Op(Enum):
    """What a write does; its params are built by the codec of the same name in :mod:`.schema`."""

    INSERT_USER = "insert_user"
    INSERT_SITE = "insert_site"
    UPSERT_APP = "upsert_app"
    UPSERT_JOB = "upsert_job"
    UPDATE_SITE_LIMITS = "update_site_limits"
    REVOKE_JOB_TOKENS = "revoke_job_tokens"
    DISABLE_USER = "disable_user"
    INSERT_TOKEN = "insert_token"
    REVOKE_TOKEN = "revoke_token"
    REVOKE_USER_TOKENS = "revoke_user_tokens"
    INSERT_TASK = "insert_task"
    INSERT_PARENT = "insert_parent"
    UPSERT_DATA = "upsert_data"
    UPDATE_TASK = "update_task"
    REROUTE_TASK = "reroute_task"
    INSERT_EVENT = "insert_event"
    INSERT_TAG = "insert_tag"
    INSERT_SUBMISSION = "insert_submission"
    INSERT_AUDIT = "insert_audit"
    UPSERT_PILOT = "upsert_pilot"
    DELETE_PILOT = "delete_pilot"

    # Members are singletons compared by identity: hash them in C, not with Enum's
    # Python-level __hash__ (every write of every task is grouped by its Op).
    __hash__ = object.__hash__


Write = tuple[Op, Sequence[Any]]
"""One semantic write: what to do, and its parameters in the codec's order."""


@dataclass(frozen=True)
class TaskQuery:
    """A filter over one owner's tasks, with names already resolved to ids."""

    owner_id: int
    site_ids: tuple[int, ...] = ()
    """Site restrictions, all of which must hold (a site or pilot token, a site filter)."""
    states: tuple[str, ...] = ()
    app: str | None = None
    ids: tuple[int, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    since: float | None = None
    """Only tasks created at or after this time."""
    until: float | None = None
    """Only tasks created before this time."""


@dataclass(frozen=True)
class SiteRow:
    id: int
    owner_id: int
    name: str
    created_at: float
    limits_json: str
    """The site's limits as the agent last sent them (JSON), or ``""``."""


@dataclass(frozen=True)
class Recovered:
    """Everything a controller loads when it starts on a store."""

    next_task: int
    next_event: int
    sites: list[SiteRow]
    apps: list[AppRec]
    live: list[LiveTask]
    """Tasks not final, with their inline bytes (``in_data``/``out_data``) attached."""
    parents: list[tuple[int, int]]
    """(child, parent) of every live task (each one's ``parent_ids`` set from them too)."""
    jobs: list[JobRec]
    """Every batch job, with ``token_id`` set to its live pilot token, if any."""
    pilots: list[PilotRow]
    """Pilots welcomed and not let go before the controller stopped."""


class Store(Protocol):
    """A durable store. An async context manager owning its writer task.

    Reads see every write whose ``on_commit`` has run. Reads raise
    :class:`~tidewater.errors.StoreError` on a backend failure; a failed
    commit stops the writer (and so the controller) rather than
    acknowledging what is not stored.
    """

    after_batch: Callable[[], None] | None
    """Called after the ``on_commit`` callbacks of every committed batch."""
    on_batch: Callable[[float, int], None] | None
    """Called with (seconds the commit took, ops in the batch) after every commit."""
    url: str
    """Where the store is, for messages (never with a password)."""

    @property
    def batches(self) -> int:
        """Transactions committed so far."""

    @property
    def ops_committed(self) -> int:
        """Writes (``write``/``commit`` calls) committed so far."""

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    # ------------------------------------------------------------------ writes

    def write_nowait(self, writes: list[Write],
                     on_commit: Callable[[], None] | None = None) -> None:
        """Queue a write at once, in order, without waiting for room. Raises StoreError if closed."""

    def abandon(self) -> int:
        """Take no more writes, drop the queued ones uncommitted (never acknowledged): how many."""

    async def write(self, writes: list[Write],
                    on_commit: Callable[[], None] | None = None) -> None:
        """Queue a write, then wait while the queue is over its bound. Cancel-safe (stays queued)."""

    async def commit(self, writes: list[Write]) -> None:
        """Queue a write and wait until it is committed."""

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> Recovered: ...

    # ------------------------------------------------------------------ tasks

    async def task_states(self, owner_id: int, ids: Sequence[int]) -> dict[int, TaskState]:
        """The stored state of each of ``ids`` that ``owner_id`` owns (others are absent)."""

    async def tasks(self, owner_id: int, ids: Sequence[int]) -> list[LiveTask]:
        """The stored records of ``owner_id``'s tasks among ``ids`` (any order)."""

    async def query(self, q: TaskQuery, *, after_id: int, limit: int,
                    newest: bool) -> list[LiveTask]:
        """Tasks matching ``q`` with id > ``after_id``, ascending (descending if ``newest``)."""

    async def count(self, q: TaskQuery) -> list[tuple[int, str, int]]:
        """(site id, state, how many) of the tasks matching ``q``, for each pair with any."""

    async def events_since(self, q: TaskQuery, since: int, limit: int, *,
                           upto: int | None = None) -> list[StoredEvent]:
        """Events with id > ``since`` (and <= ``upto``) of the tasks matching ``q``, in id order."""

    async def task_id_at(self, when: float) -> int:
        """The first task id created at or after ``when`` (one past the last if none).

        Ids grow with creation time, so a time window is an id range: a
        binary search on the primary key, O(log tasks) index probes.
        """

    async def parents_of(self, children: Sequence[int]) -> list[tuple[int, int]]:
        """(child, parent) of every parent of ``children``."""

    async def children_of(self, parents: Sequence[int]) -> list[tuple[int, int]]:
        """(child, parent) of every child of ``parents``."""

    async def inline_data(self, task_ids: Sequence[int]) -> list[tuple[int, str, str, bytes]]:
        """(task, direction, path, bytes) of the inline inputs and outputs of ``task_ids``."""

    async def events_of(self, task_ids: Sequence[int]
                        ) -> dict[int, list[tuple[str, str, float]]]:
        """(from_state, to_state, time) of each task's events in commit order, by task
        id (the caller has checked the tasks are the asker's)."""

    async def output_data(self, task_id: int, path: str) -> bytes | None:
        """The inline bytes of a task's output, if stored."""

    async def prior_submission(self, owner_id: int, key: str) -> tuple[int, int] | None:
        """(first id, count) of the Submit ``owner_id`` made with idempotency ``key``."""

    # ------------------------------------------------------------------ tokens and users

    async def token(self, token_id: str) -> TokenRow | None: ...

    async def legacy_token(self, token_hash: str) -> TokenRow | None:
        """A token minted before tokens had ids (unsalted hash)."""

    async def tokens_of(self, user_id: int, *, include_revoked: bool,
                        limit: int) -> list[TokenRow]:
        """A user's tokens, oldest first."""

    async def live_token_ids(self, user_id: int) -> list[str]: ...

    async def dead_tokens(self, token_ids: Sequence[str]) -> list[str]:
        """Those of ``token_ids`` that are revoked or whose user was removed."""

    async def user(self, user_id: int) -> UserRow | None: ...

    async def user_by_name(self, name: str) -> UserRow | None:
        """The user called ``name`` (removed users too: names are never reused)."""

    async def users(self) -> list[UserRow]: ...

    async def next_user_id(self) -> int: ...

    async def audit(self, user_id: int | None, limit: int) -> list[tuple[Any, ...]]:
        """The newest ``limit`` audit entries (of ``user_id``, or everyone's), oldest first:
        (id, time, user, token_id, remote, action, object, detail)."""


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://…"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
