"""What the dashboard's JSON says: controller replies shaped for the page, and live counts. Pure.

Every function here takes what the driver already answered (``SiteInfo``,
``BatchJobInfo``, ``TaskInfo``, events) and returns plain JSON-able dicts;
:class:`LiveCounts` folds committed task events into counts by state. No
I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ... import latency
from ... import proto as P
from ...errors import InvalidRequest
from ...states import STORED, TaskState

STATES = [s.value for s in TaskState if s in STORED]
"""Every state a stored task can be in, in the order of the state machine."""
PAGE = 50
"""Tasks per page of the list unless the page asks for fewer or more."""
MAX_PAGE = 500
EVENTS_SHOWN = 500
"""Most events of one task's timeline (the first ones: a task retried many times has more)."""


# ---------------------------------------------------------------------- filters


@dataclass(frozen=True)
class ListQuery:
    """The task list's filters and page, as parsed from the query string."""

    filter: P.TaskFilter = field(default_factory=P.TaskFilter)
    after: int = 0
    limit: int = PAGE


def parse_list_query(q: Mapping[str, str], tags: Sequence[str] = ()) -> ListQuery:
    """``state`` (comma-separated), ``app``, ``site``, ``after`` (an id: the page after it)
    and ``limit`` from ``q``; ``tags`` the ``tag`` parameters, each ``key=value`` (all must
    hold). Raises InvalidRequest for bad values."""
    states = [s for s in q.get("state", "").split(",") if s]
    bad = [s for s in states if s not in STATES]
    if bad:
        raise InvalidRequest(f"unknown state {bad[0]!r} (states: {', '.join(STATES)})")
    by_tag: dict[str, str] = {}
    for item in tags:
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidRequest(f"a tag filter is key=value, not {item!r}")
        by_tag[key.strip()] = value.strip()
    after = _int(q, "after", 0, 0, 2**62)
    limit = _int(q, "limit", PAGE, 1, MAX_PAGE)
    return ListQuery(
        filter=P.TaskFilter(states=states, tags=by_tag, app=q.get("app") or None,
                            site=q.get("site") or None),
        after=after, limit=limit)


def _int(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name, "")
    if raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {raw!r}") from None
    if not lo <= v <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, not {v}")
    return v


def window_args(q: Mapping[str, str]) -> tuple[int, int]:
    """The charts' ``window`` (seconds back from now) and ``bin`` (seconds). Raises InvalidRequest."""
    window = _int(q, "window", 3600, 60, 30 * 86400)
    bin_s = _int(q, "bin", max(5, window // 60), 1, window)
    return window, bin_s


# ---------------------------------------------------------------------- overview


def site_json(s: P.SiteInfo) -> dict[str, Any]:
    """A site with its health, last heartbeat and its pilots' busy and free slots."""
    pilots = []
    for p in s.pilot_list:
        busy = p.running
        pilots.append({"id": p.pilot_id, "host": p.hostname, "cores": p.cores, "gpus": p.gpus,
                       "connected": p.connected, "last_seen": p.last_seen or None,
                       "busy": busy, "free": max(0, p.cores - busy) if p.connected else 0,
                       "batch_job": p.batch_job or None, "draining": p.draining})
    last = max(s.agent_seen, s.pilot_seen)
    return {"name": s.name, "health": s.health, "health_reason": s.health_reason,
            "agent": s.agent, "last_heard": last or None, "agent_seen": s.agent_seen or None,
            "pilot_seen": s.pilot_seen or None, "cores": s.cores, "gpus": s.gpus,
            "busy": sum(p["busy"] for p in pilots if p["connected"]),
            "free": sum(p["free"] for p in pilots), "batch_jobs": s.batch_jobs,
            "pilots": pilots}


def job_json(j: P.BatchJobInfo) -> dict[str, Any]:
    return {"id": j.id, "site": j.site, "state": j.state, "nodes": j.nodes,
            "wall_time_min": j.wall_time_min, "queue": j.queue, "scheduler_id": j.scheduler_id,
            "autoscaled": j.autoscaled, "created_at": j.created_at,
            "submitted_at": j.submitted_at, "started_at": j.started_at, "ended_at": j.ended_at,
            "pilots": j.pilots, "reason": j.reason, "error": j.error}


def health_of(sites: Iterable[P.SiteInfo]) -> dict[str, dict[str, str]]:
    """Each site's health and why: what the live feed pushes when it changes."""
    return {s.name: {"health": s.health, "reason": s.health_reason} for s in sites}


# ---------------------------------------------------------------------- tasks


def task_row(t: P.TaskInfo) -> dict[str, Any]:
    """A task as one line of the list."""
    return {"id": t.id, "app": t.app, "site": t.site, "state": t.state, "tags": t.tags,
            "attempt": t.attempt, "created_at": t.created_at, "started_at": t.started_at,
            "finished_at": t.finished_at, "exit_code": t.exit_code,
            "error": t.error[:200]}


def task_detail(t: P.TaskInfo, events: Sequence[tuple[str, str, float]]) -> dict[str, Any]:
    """Everything the task page shows: parameters, timeline, tails, transfers, attempts, routes."""
    shown = list(events[:EVENTS_SHOWN])
    ph = latency.phases(shown)
    attempts = [{"n": i + 1, "start": a, "end": b, "seconds": None if b is None else b - a}
                for i, (a, b) in enumerate(ph.runs)]
    return {
        **task_row(t),
        "error": t.error, "params": t.params, "priority": t.priority, "retries": t.retries,
        "max_retries": t.max_retries, "pilot": t.pilot, "workdir": t.workdir,
        "stdout_tail": t.stdout_tail, "stderr_tail": t.stderr_tail,
        "events": [{"from": a, "to": b, "time": at} for a, b, at in shown],
        "events_more": len(events) > EVENTS_SHOWN,
        "attempts": attempts,
        "phases": {"parents": ph.parents, "stage_in": ph.stage_in, "run_delay": ph.run_delay,
                   "run": ph.run, "stage_out": ph.stage_out, "total": ph.total},
        "transfers": [msgspec.to_builtins(f) for f in t.files],
        "routes": [msgspec.to_builtins(r) for r in t.routes],
    }


def series_json(series: Mapping[str, latency.Series]) -> dict[str, list[list[float]]]:
    return {site: [[a, b] for a, b in pts] for site, pts in series.items()}


# ---------------------------------------------------------------------- live counts


class LiveCounts:
    """One user's task counts by state, moved by the committed events of a watch.

    The watch opens first; then the counts are read from the store
    (:meth:`reading`, then :meth:`read`), and every event after that moves
    a task from one state to another (:meth:`apply`; a task's first event
    comes from ``CREATED``, which is not counted). A read during which no
    event arrived is exact, and stays exact under the events that follow. A
    read during which events arrived may have counted some of them already:
    it is taken as a first guess (``exact`` stays False) and the driver reads
    again later, until a read is quiet.
    """

    def __init__(self) -> None:
        self.by_state: dict[str, int] = dict.fromkeys(STATES, 0)
        self.version = 0
        """Incremented on every change (the pusher compares it with what it sent)."""
        self.exact = False
        self._based = False
        self._seen = 0

    def reading(self) -> int:
        """A read of the counts begins: the mark to give :meth:`read` with its result."""
        return self._seen

    def read(self, mark: int, by_state: Mapping[str, int]) -> None:
        """The counts read from the store, by a read begun at ``mark``."""
        quiet = self._seen == mark
        if quiet or not self._based:
            self.by_state = dict.fromkeys(STATES, 0)
            for k, v in by_state.items():
                if k in self.by_state:
                    self.by_state[k] = int(v)
            self.version += 1
            self._based = True
            self.exact = quiet

    def apply(self, events: Iterable[P.TaskEvent]) -> None:
        self._seen += 1
        changed = False
        for e in events:
            if e.from_state == e.to_state:
                continue
            if e.from_state in self.by_state:
                self.by_state[e.from_state] = max(0, self.by_state[e.from_state] - 1)
            if e.to_state in self.by_state:
                self.by_state[e.to_state] += 1
            changed = True
        if changed and self._based:
            self.version += 1

    def json(self) -> dict[str, Any]:
        return {"by_state": dict(self.by_state), "total": sum(self.by_state.values())}
