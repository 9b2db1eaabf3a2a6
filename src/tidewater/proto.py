# mypy: disable-error-code="misc"
# (mypy reads msgspec's dataclass_transform as if tagged subclasses dropped frozen=True;
#  msgspec inherits the base's frozen/kw_only config.)
"""Every message that crosses a Tidewater websocket, and nothing else.

Messages are frozen, tagged msgspec Structs (``tag_field="op"``), grouped in
one union per direction. Frames are msgpack in binary websocket frames. This
module does no I/O: drivers call :func:`encode` and the per-direction
decoders built once at import.

Schema evolution: a new field always has a default; a field is never retyped
or renamed. Bump :data:`PROTO_VERSION` only for a change old peers cannot
ignore.

Conversation shape, for every role::

    peer                                  controller
      Hello(role, proto_version, token) ->
                                        <- Welcome(...)  |  Reject(reason) + close
      requests carrying req_id          ->
                                        <- replies carrying the same req_id
                                           (or Error(req_id, code, message))

Pilots send their task reports in sequenced ``Report`` frames; the
controller answers ``Ack(seq)`` only after the store has committed them.
Unacknowledged reports are kept in the pilot's outbox and resent after a
reconnect; the controller handles them idempotently per (task, attempt,
kind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

PROTO_VERSION = 1

T = TypeVar("T")

I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""Every integer on the wire fits the store's 64-bit integers: larger ones are refused
when the frame is decoded, instead of overflowing where they are written."""

Role = Literal["client", "pilot", "agent"]


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of every wire message."""


# --------------------------------------------------------------------------
# Shared value types (not messages on their own)


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    """Base of plain value types carried inside messages."""


class ParamSpec(Struct):
    """One declared parameter of an app's command template."""

    name: str
    type: Literal["str", "int", "float", "bool"] = "str"
    required: bool = True
    default: str | I64 | float | bool | None = None


class AppHooks(Struct):
    """Callables on the site (``pkg.mod:name``) run by the pilot around each task.

    ``preprocess(ctx)`` before the run and ``postprocess(ctx)`` after a
    successful one (raising fails the attempt); ``on_error(ctx)`` and
    ``on_timeout(ctx)`` return ``"retry"`` or ``"fail"``. ``ctx`` is a
    :class:`tidewater.hooks.HookContext` (task id, attempt, work directory,
    exit code, stdout/stderr tails, retries left).
    """

    preprocess: str = ""
    postprocess: str = ""
    on_error: str = ""
    on_timeout: str = ""


class AppInfo(Struct):
    site: str
    name: str
    command: str
    params: list[ParamSpec] = []
    description: str = ""
    function: str = ""
    """A Python function app: the callable's import path on the site (``pkg.mod:name``)."""
    hooks: AppHooks | None = None


class PilotInfo(Struct):
    """One pilot of a site as the controller knows it now."""

    pilot_id: str
    hostname: str = ""
    cores: I64 = 0
    gpus: I64 = 0
    connected: bool = False
    """False: its connection closed (or it is not back since a restart) and its lease runs."""
    last_seen: float = 0.0
    """When it last said anything (0: not since the controller started)."""
    running: I64 = 0
    """Tasks it holds."""
    batch_job: I64 = 0
    draining: bool = False


class SiteInfo(Struct):
    name: str
    created_at: float
    pilots: I64 = 0
    """Pilots connected now."""
    cores: I64 = 0
    gpus: I64 = 0
    agent: bool = False
    """The site's agent is connected now."""
    batch_jobs: I64 = 0
    """Batch jobs of the site not yet ended."""
    health: str = ""
    """``up``, ``degraded`` (agent gone, pilots alive) or ``down`` (nothing connected)."""
    health_reason: str = ""
    """Why, in a sentence naming when the agent and the pilots were last heard from."""
    agent_seen: float = 0.0
    """When the site's agent last said anything (0: not since the controller started)."""
    pilot_seen: float = 0.0
    """When any pilot of the site last said anything (0: not since the controller started)."""
    pilot_list: list[PilotInfo] = []
    """Every pilot the controller holds for the site, connected or within its lease."""


class Resources(Struct):
    """What one task needs. ``cores``/``gpus`` are per node.

    A task with ``num_nodes > 1`` or ``ranks_per_node > 1`` runs through the
    site's MPI launcher on whole nodes of one batch job. A single-node task
    takes ``max(cores, ranks_per_node * threads_per_rank)`` cores, and at
    least ``1/node_packing_count`` of its node.
    """

    cores: I64 = 1
    gpus: I64 = 0
    num_nodes: I64 = 1
    ranks_per_node: I64 = 1
    threads_per_rank: I64 = 1
    gpus_per_rank: I64 = 0
    node_packing_count: I64 = 0
    """At most this many such tasks share one node (0: no limit)."""


class Input(Struct):
    """A file or directory a task needs in its work directory before it runs.

    Exactly one source: ``url`` (fetched by the site's agent: ``file://``,
    ``sftp://user@host/path``, ``globus://ENDPOINT/path``), ``data`` (inline,
    up to the controller's ``max_inline_bytes``, written by the pilot), or
    ``task`` + ``output``: a parent task's output by reference.
    """

    path: str
    """Where it goes, relative to the task's work directory."""
    url: str = ""
    data: bytes | None = None
    task: I64 = 0
    output: str = ""
    sha256: str = ""
    """Expected SHA-256 (hex); a transfer that lands anything else fails."""


class Output(Struct):
    """A file or directory the task leaves in its work directory; its name is its path.

    With ``url`` the site's agent sends it there after a successful run.
    Without, it comes back inline when it is at most ``max_inline_bytes``
    (``client.download``), else it stays on the site for children to use.
    """

    path: str
    url: str = ""


class FileInfo(Struct):
    """One input or output of a task and what became of it.

    ``state``: ``pending`` (not moved yet), ``done`` (moved by the agent),
    ``inline`` (held by the controller), ``on_site`` (left in the task's work
    directory on the site), ``failed``.
    """

    direction: Literal["in", "out"]
    path: str
    url: str = ""
    task: I64 = 0
    output: str = ""
    state: str = "pending"
    size: I64 | None = None
    sha256: str = ""
    error: str = ""
    attempts: I64 = 0
    site_path: str = ""
    """Where a parent's output is on the site, relative to its work root (references)."""
    expect_sha256: str = ""


class TaskSpec(Struct):
    """What a client asks to run."""

    app: str
    site: str
    params: dict[str, str | I64 | float | bool] = {}
    tags: dict[str, str] = {}
    priority: I64 = 0
    resources: Resources = Resources()
    timeout: float | None = None
    max_retries: I64 = 3
    env: dict[str, str] = {}
    workdir: str | None = None
    wall_time: float | None = None
    """Estimated run time in seconds: a pilot whose allocation ends sooner does not start it."""
    parents: list[I64] = []
    """Ids of tasks (yours) that must finish first; a failed or killed one fails or kills this."""
    args: bytes = b""
    """Function apps: the call's arguments, ``tidewater.codec.encode_call(args, kwargs)``."""
    inputs: list[Input] = []
    outputs: list[Output] = []
    sites: list[str] = []
    """Candidate sites: the controller routes the task to one of them (``site`` is then
    ``"any"``); ``site="any"`` without ``sites``: every site of yours that has the app."""
    policy: str = ""
    """Routing policy among candidates: ``earliest-start`` (default), ``shortest-backlog``,
    ``round-robin`` (see ``tidewater.controller.routing``)."""


class RouteEstimate(Struct):
    """One candidate site's numbers when a task was routed (seconds from then)."""

    site: str
    health: str
    start: float | None = None
    """Estimated wait until the task could start there (None: no way to start it)."""
    finish: float | None = None
    backlog: I64 = 0
    """Tasks queued or running there."""
    transfer: float = 0.0
    """Estimated time to move its inputs there."""
    run: float = 0.0
    """Expected run time there (measured mean, else the task's wall_time, else 60 s)."""
    note: str = ""
    cores: I64 = 0
    """Cores of the pilots connected there (what ``shortest-backlog`` divides by)."""


class Route(Struct):
    """Where a task submitted to several sites was sent, by which policy, and why."""

    policy: str
    chosen: str
    time: float
    candidates: list[RouteEstimate] = []
    reason: str = ""


class RemoteError(Struct):
    """A function task's exception as its worker described it: names and text, never a pickle.

    ``type`` is its qualified name (``builtins.ValueError``, ``mypkg.io.BadFrame``);
    ``builtins`` the names of the built-in exception classes it derives from
    (its MRO entries in ``builtins`` that are subclasses of ``Exception``, nearest
    first), from which the client picks the built-in to raise it as; ``message``
    is ``str()`` of it and ``traceback`` the end of its formatted traceback, both
    bounded by the worker. A peer may send anything here: the client only ever
    looks names up among the built-in exceptions (:func:`tidewater.errors.builtin_base`).
    """

    type: str
    builtins: list[str] = []
    message: str = ""
    traceback: str = ""


class TaskInfo(Struct):
    """The controller's view of one task, as listed and watched."""

    id: I64
    app: str
    site: str
    state: str
    params: dict[str, str | I64 | float | bool] = {}
    tags: dict[str, str] = {}
    priority: I64 = 0
    attempt: I64 = 0
    retries: I64 = 0
    max_retries: I64 = 0
    exit_code: I64 | None = None
    error: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    pilot: str = ""
    workdir: str = ""
    result: bytes | None = None
    """Function apps: the return value, ``tidewater.codec`` msgpack (``Task.value()`` decodes it)."""
    files: list[FileInfo] = []
    """Inputs and outputs with their transfer state (no inline bytes: ``client.download``)."""
    routes: list[Route] = []
    """For a task routed among several sites: each routing, the first at submit."""
    exception: RemoteError | None = None
    """A function task whose last attempt ended in an exception: what its function raised
    (``Task.value()`` of a FAILED task raises it as :class:`~tidewater.TaskFailed`)."""
    parents: list[I64] = []
    """The tasks this one waited for (submitted with ``parents=`` or an input reference)."""


class TaskEvent(Struct):
    """One committed state transition; ``id`` grows monotonically."""

    id: I64
    task_id: I64
    from_state: str
    to_state: str
    time: float
    data: dict[str, str | I64 | float | None] = {}
    tags: dict[str, str] = {}


class TaskPhases(Struct):
    """One task's latency accounting: seconds in each phase, from its events
    (``tidewater.latency`` defines each phase; None: it did not happen)."""

    id: I64
    site: str
    app: str
    state: str
    tags: dict[str, str] = {}
    cores: I64 = 1
    created_at: float = 0.0
    parents: float | None = None
    stage_in: float | None = None
    run_delay: float | None = None
    run: float | None = None
    stage_out: float | None = None
    total: float | None = None
    attempts: I64 = 0
    ended: float | None = None
    """When the task reached its final state."""
    runs: list[tuple[float, float | None]] = []
    """Every RUNNING interval (start, end); end None while it runs."""


class NodeInfo(Struct):
    """One node a pilot serves."""

    host: str
    cores: I64
    gpus: I64 = 0


class SiteLimits(Struct):
    """What a site's agent says its scheduler allows (None: unknown, not checked)."""

    cores_per_node: I64 | None = None
    gpus_per_node: I64 | None = None
    max_nodes_per_job: I64 | None = None
    max_wall_time_min: I64 | None = None
    queues: list[str] = []
    projects: list[str] = []
    scheduler: str = ""


class JobSpec(Struct):
    """A batch job asked for by a user or by the site's autoscaler."""

    site: str
    nodes: I64 = 1
    wall_time_min: I64 = 30
    queue: str = ""
    project: str = ""


class BatchJobInfo(Struct):
    """The controller's view of one batch job."""

    id: I64
    site: str
    state: str
    nodes: I64
    wall_time_min: I64
    queue: str = ""
    project: str = ""
    scheduler_id: str = ""
    autoscaled: bool = False
    created_at: float = 0.0
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    reason: str = ""
    """The scheduler's word on the job: pending reason, TIMEOUT, CANCELLED, exit code."""
    error: str = ""
    """Why submitting or cancelling failed, with the command and what it printed."""
    pilots: I64 = 0
    """Pilots of this job connected now."""
    first_pilot_at: float | None = None
    """When the job's first pilot connected (since the controller started)."""
    first_pilot_process_at: float | None = None
    """When that pilot's process had started: the scheduler's start, to within the launch."""
    flagged: str = ""
    """Something looks wrong (running but no pilot has connected)."""


class TokenInfo(Struct):
    """A token as its owner may see it: never the secret."""

    id: str
    kind: str
    site: str = ""
    batch_job: I64 = 0
    name: str = ""
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None


class UserInfo(Struct):
    name: str
    admin: bool = False
    created_at: float = 0.0
    removed_at: float | None = None


class AuditEntry(Struct):
    """Who did what, when, from where."""

    id: I64
    time: float
    user: str
    token_id: str
    remote: str
    action: str
    object: str
    detail: str = "{}"


class TaskFilter(Struct):
    ids: list[I64] = []
    states: list[str] = []
    tags: dict[str, str] = {}
    site: str | None = None
    app: str | None = None
    since: float | None = None
    """Only tasks created at or after this time (seconds since the epoch; listings)."""
    until: float | None = None
    """Only tasks created before this time (listings)."""


# --------------------------------------------------------------------------
# Handshake (every role)


class Hello(Msg, tag="hello"):
    role: Role
    proto_version: I64
    token: str
    name: str = ""
    # Pilot only ------------------------------------------------------------
    site: str = ""
    pilot_id: str = ""
    hostname: str = ""
    cores: I64 = 0
    gpus: I64 = 0
    # Credit the pilot grants at (re)connection: free resources plus prefetch.
    credit_cores: I64 = 0
    credit_gpus: I64 = 0
    # (task_id, attempt) the pilot holds: queued, running, or finished with a
    # report still in its outbox. Lets the controller reconcile after a
    # reconnect or a controller restart.
    held: list[tuple[I64, I64]] = []
    # Pilot inside a batch job (with a pilot token) ------------------------
    batch_job: I64 = 0
    nodes: list[NodeInfo] = []
    """Head mode: every node the pilot launches on; node mode: its own node (or empty)."""
    end_time: float | None = None
    process_started_at: float | None = None
    """When the pilot's process started (its start-up time is the gap to this Hello)."""
    # Agent only --------------------------------------------------------------
    limits: SiteLimits | None = None
    # Every role ----------------------------------------------------------------
    batches: bool = False
    """The peer reads frames that hold several messages (:func:`pack`)."""


class Welcome(Msg, tag="welcome"):
    proto_version: I64
    server_id: str
    user: str = ""
    site: str = ""
    heartbeat_interval: float = 5.0
    lease_timeout: float = 30.0
    max_frame_bytes: I64 = 0
    max_tasks_per_submit: I64 = 0
    max_inline_bytes: I64 = 0
    """Largest inline input (all of a task's together), argument or output."""
    site_tag: str = ""
    """Agents: a short tag unique to this site on this controller's store (job names carry it)."""
    batches: bool = False
    """The controller reads frames that hold several messages (:func:`pack`)."""


class Reject(Msg, tag="reject"):
    reason: str
    code: str = "rejected"


class Error(Msg, tag="error"):
    """A request failed; nothing it asked for was changed."""

    req_id: I64
    code: str
    message: str


class Ping(Msg, tag="ping"):
    time: float = 0.0


# --------------------------------------------------------------------------
# Client -> controller


class Submit(Msg, tag="submit"):
    req_id: I64
    tasks: list[TaskSpec]
    # Client-chosen idempotency key: a resent Submit with the same key returns
    # the ids created the first time instead of creating tasks again.
    key: str = ""
    # Set on a resend after a reconnect: the controller then also looks for the
    # key in the store (it may have restarted); first sends skip that read.
    resend: bool = False
    # Submit and wait in one request: after Submitted, each task's final TaskInfo
    # is pushed to this connection in Results frames under this req_id, as for a
    # Wait sent at once (one round trip fewer on the latency-critical path).
    wait: bool = False


class Query(Msg, tag="query"):
    req_id: I64
    filter: TaskFilter = TaskFilter()
    limit: I64 = 1000
    after_id: I64 = 0
    # The newest ``limit`` matches (still listed oldest first) instead of the oldest.
    newest: bool = False


class ListPhases(Msg, tag="list_phases"):
    """The phases of the tasks matching ``filter``, oldest first: at most
    ``limit`` (capped by the controller's query limit) with ids after ``after_id``."""

    req_id: I64
    filter: TaskFilter = TaskFilter()
    limit: I64 = 1000
    after_id: I64 = 0
    since: float | None = None
    """Only tasks created at or after this time (seconds since the epoch)."""
    until: float | None = None
    """Only tasks created before this time; the listing ends at the first task created later."""


class CountTasks(Msg, tag="count_tasks"):
    """How many of the asker's tasks match ``filter``, by state and by site and state."""

    req_id: I64
    filter: TaskFilter = TaskFilter()


class Watch(Msg, tag="watch"):
    req_id: I64
    filter: TaskFilter = TaskFilter()
    # Replay committed events with id greater than this before live ones
    # (0: live only). A reconnecting client passes the last id it saw.
    since_event: I64 = 0


class Unwatch(Msg, tag="unwatch"):
    req_id: I64
    watch_id: I64


class Wait(Msg, tag="wait"):
    """Ask for each task's final result as soon as it reaches a final state."""

    req_id: I64
    ids: list[I64]


class Cancel(Msg, tag="cancel"):
    req_id: I64
    ids: list[I64]


class Download(Msg, tag="download"):
    """Read part of a task's output: inline from the controller, or from the site.

    ``offset``/``length`` page through a large file kept on the site; the
    answer is a :class:`FileData`.
    """

    req_id: I64
    task_id: I64
    path: str
    offset: I64 = 0
    length: I64 = 1 << 20


class AddSite(Msg, tag="add_site"):
    req_id: I64
    name: str


class ListSites(Msg, tag="list_sites"):
    req_id: I64


class AddApp(Msg, tag="add_app"):
    req_id: I64
    site: str
    name: str
    command: str
    params: list[ParamSpec] | None = None
    description: str = ""
    replace: bool = False
    function: str = ""
    """Instead of ``command``: a Python callable's import path on the site (``pkg.mod:name``)."""
    hooks: AppHooks | None = None


class ListApps(Msg, tag="list_apps"):
    req_id: I64
    site: str | None = None


class AddJob(Msg, tag="add_job"):
    req_id: I64
    job: JobSpec


class ListJobs(Msg, tag="list_jobs"):
    req_id: I64
    site: str | None = None
    include_finished: bool = False
    limit: I64 = 100


class CancelJob(Msg, tag="cancel_job"):
    req_id: I64
    id: I64


class CreateToken(Msg, tag="create_token"):
    req_id: I64
    kind: Literal["user", "site"] = "user"
    site: str | None = None
    name: str = ""
    expires_in: float | None = None
    """Seconds from now; None: no expiry."""


class ListTokens(Msg, tag="list_tokens"):
    req_id: I64
    include_revoked: bool = False


class RevokeToken(Msg, tag="revoke_token"):
    req_id: I64
    id: str


class AddUser(Msg, tag="add_user"):
    """Admins only."""

    req_id: I64
    name: str
    admin: bool = False
    expires_in: float | None = None


class RemoveUser(Msg, tag="remove_user"):
    """Admins only: the user's tokens are revoked and connections closed; data is kept."""

    req_id: I64
    name: str


class ListUsers(Msg, tag="list_users"):
    req_id: I64


class ListAudit(Msg, tag="list_audit"):
    req_id: I64
    limit: I64 = 100
    everyone: bool = False
    """Admins: every user's entries."""


class Retry(Msg, tag="retry"):
    """Run FAILED tasks again under the same ids (a new attempt each): ``ids``, or at
    most ``limit`` of the tasks matching ``filter`` (its states must include FAILED).
    Children that failed because a retried task failed wait for it again. Answered
    by :class:`Retried`."""

    req_id: I64
    ids: list[I64] = []
    filter: TaskFilter | None = None
    limit: I64 = 10_000
    after_id: I64 = 0
    """With ``filter``: only tasks with ids above this (the last page's ``next_after``)."""


class Resubmit(Msg, tag="resubmit"):
    """New tasks with the specs of ``ids`` (any state); answered by :class:`Submitted`.
    ``key``: as Submit's, so a resend creates nothing twice."""

    req_id: I64
    ids: list[I64]
    key: str = ""


class ListEvents(Msg, tag="list_events"):
    """Committed events after ``since_event`` of the tasks matching ``filter``, in id
    order: at most ``limit`` (capped by the controller), the work of one request bounded
    by it (see :class:`EventList`). Answered by :class:`EventList`."""

    req_id: I64
    filter: TaskFilter = TaskFilter()
    since_event: I64 = 0
    limit: I64 = 1000


class ReadLog(Msg, tag="read_log"):
    """Read part of a task's stdout (``stderr``: its stderr) from its work directory on
    its site; answered by :class:`FileData` (``size``: the file's size now)."""

    req_id: I64
    task_id: I64
    stderr: bool = False
    offset: I64 = 0
    length: I64 = 1 << 20


ClientToController = (
    Hello | Ping | Submit | Query | Watch | Unwatch | Wait | Cancel | AddSite | ListSites
    | AddApp | ListApps | AddJob | ListJobs | CancelJob | CreateToken | ListTokens | RevokeToken
    | AddUser | RemoveUser | ListUsers | ListAudit | Download | ListPhases | CountTasks
    | Retry | Resubmit | ListEvents | ReadLog
)


# --------------------------------------------------------------------------
# Controller -> client


class Submitted(Msg, tag="submitted"):
    req_id: I64
    ids: list[I64]
    warnings: list[str] = []
    """Stored, but worth knowing: e.g. a site with nothing connected, where tasks will wait."""


class TaskList(Msg, tag="task_list"):
    req_id: I64
    tasks: list[TaskInfo]
    truncated: bool = False
    """Fewer than asked for, to keep the frame under its limit (large function results):
    ask again after the last id for more."""


class TaskCounts(Msg, tag="task_counts"):
    """The reply to :class:`CountTasks`: only states and sites with at least one task appear."""

    req_id: I64 = 0
    by_state: dict[str, I64] = {}
    """Tasks per state."""
    by_site: dict[str, dict[str, I64]] = {}
    """Tasks per site name, then per state."""

    @property
    def total(self) -> int:
        """How many tasks matched."""
        return sum(self.by_state.values())


class PhaseList(Msg, tag="phase_list"):
    req_id: I64
    tasks: list[TaskPhases]
    more: bool = False
    """There may be more: ask again after ``next_after``."""
    next_after: I64 = 0
    """The id to list after next (tasks outside ``since``/``until`` are read, not sent);
    0: the last task sent."""


class Watching(Msg, tag="watching"):
    req_id: I64
    watch_id: I64
    # Every event up to this id was committed before the watch began; later
    # ones are pushed. A client that reconnects before seeing any event
    # resumes from here.
    start_event: I64 = 0


class Events(Msg, tag="events"):
    watch_id: I64
    events: list[TaskEvent]


class Results(Msg, tag="results"):
    """Final results for some of the ids of a Wait; more may follow."""

    req_id: I64
    tasks: list[TaskInfo]


class Cancelled(Msg, tag="cancelled"):
    req_id: I64
    ids: list[I64]


class Retried(Msg, tag="retried"):
    """The tasks a :class:`Retry` sent back to run (its children made to wait again
    in ``waiting``); ``more``: the filter matched more than ``limit``, ask again."""

    req_id: I64
    ids: list[I64]
    waiting: list[I64] = []
    more: bool = False
    next_after: I64 = 0
    """The ``after_id`` of the next page (the last task the filter matched)."""


class EventList(Msg, tag="event_list"):
    """Events for a :class:`ListEvents`; ``next_event``: the ``since_event`` to ask with
    next; ``more``: events after it may match (committed ones were not all read)."""

    req_id: I64
    events: list[TaskEvent]
    next_event: I64
    more: bool = False


class SiteAdded(Msg, tag="site_added"):
    req_id: I64
    site: SiteInfo
    token: str


class SiteList(Msg, tag="site_list"):
    req_id: I64
    sites: list[SiteInfo]


class AppAdded(Msg, tag="app_added"):
    req_id: I64
    app: AppInfo


class AppList(Msg, tag="app_list"):
    req_id: I64
    apps: list[AppInfo]


class JobAdded(Msg, tag="job_added"):
    req_id: I64
    job: BatchJobInfo


class JobList(Msg, tag="job_list"):
    req_id: I64
    jobs: list[BatchJobInfo]


class TokenCreated(Msg, tag="token_created"):
    req_id: I64
    info: TokenInfo
    token: str


class TokenList(Msg, tag="token_list"):
    req_id: I64
    tokens: list[TokenInfo]


class UserAdded(Msg, tag="user_added"):
    req_id: I64
    name: str
    token: str


class UserList(Msg, tag="user_list"):
    req_id: I64
    users: list[UserInfo]


class AuditList(Msg, tag="audit_list"):
    req_id: I64
    entries: list[AuditEntry]


class Done(Msg, tag="done"):
    """A request with no other payload succeeded."""

    req_id: I64


class FileData(Msg, tag="file_data"):
    """Part of an output: ``data`` from ``offset``; ``size`` is the whole file's."""

    req_id: I64
    offset: I64
    data: bytes
    size: I64
    sha256: str = ""
    """Of the whole file, when known (inline outputs, and the site's last chunk)."""


ControllerToClient = (
    Welcome | Reject | Error | Ping | Submitted | TaskList | Watching | Events | Results
    | Cancelled | SiteAdded | SiteList | AppAdded | AppList | JobAdded | JobList | TokenCreated
    | TokenList | UserAdded | UserList | AuditList | Done | FileData | PhaseList | TaskCounts
    | Retried | EventList
)


# --------------------------------------------------------------------------
# Pilot <-> controller


class Assignment(Struct):
    """One task pushed to a pilot. ``argv`` runs directly; ``shell`` via /bin/sh."""

    task_id: I64
    attempt: I64
    argv: list[str] = []
    shell: str = ""
    env: dict[str, str] = {}
    workdir: str = ""
    cores: I64 = 1
    gpus: I64 = 0
    timeout: float | None = None
    wall_time: float | None = None
    # Through the MPI launcher (ranks_per_node > 1 or several hosts): ----------
    hosts: list[str] = []
    """Nodes reserved for the task, the receiving pilot's own first (empty: its node)."""
    num_nodes: I64 = 1
    ranks_per_node: I64 = 1
    threads_per_rank: I64 = 1
    gpus_per_rank: I64 = 0
    # Function apps: run in a warm worker process instead of a command ----------
    function: str = ""
    args: bytes = b""
    # Data ----------------------------------------------------------------------
    inputs: list[tuple[str, bytes]] = []
    """Inline inputs: (path in the work directory, content), written before the run."""
    outputs: list[str] = []
    """Outputs to send back inline after a successful run, if at most ``inline_limit``."""
    inline_limit: I64 = 0
    hooks: AppHooks | None = None


class RunTasks(Msg, tag="run"):
    tasks: list[Assignment]


class Kill(Msg, tag="kill"):
    """Stop these task attempts; their reports will be ignored."""

    tasks: list[tuple[I64, I64]]
    reason: str = ""


class Report(Struct):
    """What happened to one task attempt on a pilot."""

    task_id: I64
    attempt: I64
    kind: Literal["started", "done", "error", "timeout", "killed", "lost"]
    time: float
    exit_code: I64 | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    message: str = ""
    result: bytes | None = None
    """A function task's return value (codec msgpack)."""
    outputs: list[OutputFile] = []
    """After "done": each of the Assignment's ``outputs`` as found in the work directory."""
    hook: str = ""
    """After "error"/"timeout": the app's handler chose "retry" or "fail" ("": no handler)."""
    exception: RemoteError | None = None
    """After "error" of a function task: the exception the function raised."""


class OutputFile(Struct):
    """An output as the pilot found it: inline ``data`` when small, else only its size."""

    path: str
    size: I64 | None = None
    """None: the task did not produce it."""
    data: bytes | None = None
    sha256: str = ""


class Reports(Msg, tag="reports"):
    seq: I64
    reports: list[Report]


class Ack(Msg, tag="ack"):
    """Everything up to and including ``seq`` is committed."""

    seq: I64


class Credit(Msg, tag="credit"):
    """Resources the pilot frees for new work (an increment, never resent)."""

    cores: I64 = 0
    gpus: I64 = 0


class Heartbeat(Msg, tag="heartbeat"):
    time: float
    running: list[tuple[I64, I64]] = []


class Drain(Msg, tag="drain"):
    """The pilot is stopping: send it nothing more (Bye follows once it is done)."""

    reason: str = ""


class Bye(Msg, tag="bye"):
    """The pilot is leaving on purpose; requeue what it had not started."""

    reason: str = ""


PilotToController = Hello | Reports | Credit | Heartbeat | Drain | Bye | Ping
ControllerToPilot = Welcome | Reject | RunTasks | Kill | Ack | Ping | Error


# --------------------------------------------------------------------------
# Site agent <-> controller
#
#   agent                                   controller
#     Hello(role="agent", site token, limits) ->
#                                           <- Welcome, then Jobs(every live job of the site)
#                                           <- StartJob / StopJob   (user or autoscaler asked)
#                                           <- Demand               (runnable work changed)
#     JobUpdates(seq, ...)                  ->
#                                           <- Ack(seq)             (after commit)
#     RequestJob(key, spec)                 ->   (autoscaler: becomes a StartJob)


class JobUpdate(Struct):
    """What the agent learned about one batch job (from a command or the scheduler)."""

    job_id: I64
    state: str
    scheduler_id: str = ""
    time: float = 0.0
    reason: str = ""
    error: str = ""
    start_time: float | None = None
    end_time: float | None = None


class JobUpdates(Msg, tag="job_updates"):
    seq: I64
    updates: list[JobUpdate]


class RequestJob(Msg, tag="request_job"):
    """The autoscaler wants a batch job; ``key`` makes a resend create nothing twice."""

    key: str
    job: JobSpec


class AgentJob(Struct):
    """A batch job the agent must bring about (or keep track of)."""

    job: BatchJobInfo
    pilot_token: str = ""
    """Only for a job still to be submitted: the token its pilots connect with."""


class Jobs(Msg, tag="jobs"):
    """Every batch job of the site that is not final: sent after Welcome to reconcile."""

    jobs: list[AgentJob]


class StartJob(Msg, tag="start_job"):
    job: AgentJob


class StopJob(Msg, tag="stop_job"):
    job_id: I64
    scheduler_id: str = ""


class Demand(Msg, tag="demand"):
    """Runnable work of the site not yet sent to a pilot, for the autoscaler."""

    tasks: I64
    cores: I64 = 0
    """Cores the single-node tasks among them need, summed."""
    gpus: I64 = 0
    node_demand: float = 0.0
    """Whole nodes the multi-node tasks among them need, summed."""
    idle_nodes: I64 = 0
    """Connected pilot nodes with nothing to do."""
    busy_nodes: I64 = 0
    max_wall_time: float | None = None
    """The longest wall-time estimate (seconds) among those tasks: jobs must be at least as long."""


class StageItem(Struct):
    """One file or directory to move for a task.

    ``path`` is relative to the task's work directory. The other side is
    ``url``, or for a parent's output on this site ``site_path`` (relative
    to the site's work root).
    """

    path: str
    url: str = ""
    site_path: str = ""
    sha256: str = ""


class Stage(Struct):
    """Move a task's inputs in (before it runs) or outputs out (after it ran)."""

    task_id: I64
    direction: Literal["in", "out"]
    workdir: str
    """The task's work directory, relative to the site's work root."""
    items: list[StageItem]


class StageWork(Msg, tag="stage_work"):
    """Transfers for the agent: after Welcome every pending one, then each as it comes."""

    stages: list[Stage]


class Unstage(Msg, tag="unstage"):
    """The task was cancelled: drop its transfers that have not finished."""

    task_id: I64


class ItemResult(Struct):
    path: str
    ok: bool
    size: I64 | None = None
    sha256: str = ""
    error: str = ""
    attempts: I64 = 1


class StageResult(Struct):
    task_id: I64
    direction: Literal["in", "out"]
    items: list[ItemResult]


class Staged(Msg, tag="staged"):
    """Finished transfers; kept in the agent's outbox until acknowledged after commit."""

    seq: I64
    results: list[StageResult]


class ReadFile(Msg, tag="read_file"):
    """Read part of a file under the site's work root, for a client's Download."""

    req_id: I64
    path: str
    offset: I64
    length: I64


class FileChunk(Msg, tag="file_chunk"):
    """The agent's answer to ReadFile (``error`` set: nothing read)."""

    req_id: I64
    offset: I64 = 0
    data: bytes = b""
    size: I64 = 0
    sha256: str = ""
    """Of the whole file, sent with the chunk that reaches its end."""
    error: str = ""
    code: str = ""
    """With ``error``: ``not_found``, or ``bad_request`` (refused, a directory, unreadable)."""


AgentToController = Hello | JobUpdates | RequestJob | Heartbeat | Ping | Staged | FileChunk
ControllerToAgent = (
    Welcome | Reject | Jobs | StartJob | StopJob | Demand | Ack | Error | Ping | StageWork
    | Unstage | ReadFile
)


# --------------------------------------------------------------------------
# Codecs, built once

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
_json_encoder = msgspec.json.Encoder()


def chunk_by_size(items: list[T], size: Callable[[T], int], budget: int) -> list[list[T]]:
    """Split ``items`` into runs whose ``size`` adds up to at most ``budget`` (each run has at
    least one item): bulky payloads (inline data, results) spread over several frames."""
    runs: list[list[T]] = []
    cur: list[T] = []
    total = 0
    for it in items:
        n = size(it)
        if cur and total + n > budget:
            runs.append(cur)
            cur, total = [], 0
        cur.append(it)
        total += n
    if cur:
        runs.append(cur)
    return runs


def payload(obj: Assignment | Report | TaskInfo | TaskSpec) -> int:
    """The bytes an item carries beyond its fixed fields (inline data, args, results)."""
    match obj:
        case Assignment():
            return 512 + len(obj.args) + sum(len(d) for _, d in obj.inputs)
        case Report():
            return 512 + len(obj.result or b"") + sum(len(o.data or b"") for o in obj.outputs)
        case TaskInfo():
            return 1024 + len(obj.result or b"")
        case TaskSpec():
            return 512 + len(obj.args) + sum(len(i.data or b"") for i in obj.inputs)
    return 512


def encode_json(value: object) -> str:
    """JSON text of a message or value type (for the store and files)."""
    return _json_encoder.encode(value).decode()


PACK_BYTES = 256 * 1024
"""How many bytes of messages :func:`packed` puts in one frame (one message may be larger)."""


def pack(frames: Sequence[bytes]) -> bytes:
    """One frame holding the encoded messages ``frames``, in order: a msgpack array of them.

    An array needs no re-encoding (its header, then the elements as they
    are), and a receiver tells it from a single message (a map) by its first
    byte. Only for peers that said they read it (``batches`` in Hello and
    Welcome); a single message is returned as it is.
    """
    n = len(frames)
    if n == 1:
        return frames[0]
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(frames)


def packed(frames: Sequence[bytes], budget: int = PACK_BYTES) -> list[bytes]:
    """``frames`` as few frames as :func:`pack` makes them, each about ``budget`` bytes at most."""
    if len(frames) <= 1:
        return list(frames)
    return [pack(run) for run in chunk_by_size(list(frames), len, budget)]


_ARRAY_FIRST = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


class Decoder(Generic[T]):
    """A msgpack decoder for one direction whose every failure is a msgspec error.

    msgspec raises UnicodeDecodeError for a string that is not UTF-8 and
    RecursionError for a value nested deep enough; a hostile frame must get the
    same clean "malformed frame" answer as any other, so both become
    :class:`msgspec.DecodeError`.
    """

    def __init__(self, type_: type[T] | Any) -> None:
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(type_)
        self._many: msgspec.msgpack.Decoder[list[T]] = msgspec.msgpack.Decoder(list[type_])  # type: ignore[valid-type]

    def decode(self, data: bytes) -> T:
        try:
            return self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise msgspec.DecodeError(f"a string is not valid UTF-8 ({exc.reason})") from None
        except RecursionError:
            raise msgspec.DecodeError("the frame is nested too deeply") from None

    def decode_all(self, data: bytes) -> list[T]:
        """The messages of a frame: one, or those of a :func:`pack` (all or none of them)."""
        if not data or data[0] not in _ARRAY_FIRST:
            return [self.decode(data)]
        try:
            msgs = self._many.decode(data)
        except UnicodeDecodeError as exc:
            raise msgspec.DecodeError(f"a string is not valid UTF-8 ({exc.reason})") from None
        except RecursionError:
            raise msgspec.DecodeError("the frame is nested too deeply") from None
        if not msgs:
            raise msgspec.ValidationError("Expected a message, got an empty array")
        return msgs


client_decoder: Decoder[ClientToController] = Decoder(ClientToController)
to_client_decoder: Decoder[ControllerToClient] = Decoder(ControllerToClient)
pilot_decoder: Decoder[PilotToController] = Decoder(PilotToController)
to_pilot_decoder: Decoder[ControllerToPilot] = Decoder(ControllerToPilot)
agent_decoder: Decoder[AgentToController] = Decoder(AgentToController)
to_agent_decoder: Decoder[ControllerToAgent] = Decoder(ControllerToAgent)
hello_decoder: Decoder[Hello] = Decoder(Hello)
