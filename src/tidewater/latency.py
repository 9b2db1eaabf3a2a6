"""Latency accounting: a task's phases from its event rows, and the reports.

Pure: no I/O, no clock (``now`` is an argument). The controller turns each
task's stored events into a :class:`Phases` (:func:`phases`) and sends it as
a :class:`~tidewater.proto.TaskPhases`; the client builds the reports from
those with :func:`latency_table`, :func:`throughput` and :func:`utilization`.

A task's life, in the times its events were committed::

    created ── parents ──> READY ── stage_in ──> STAGED_IN ── run_delay ──> RUNNING
    RUNNING ── run ──> RUN_DONE ── stage_out ──> JOB_FINISHED

* ``parents``: created until READY (0 without parents);
* ``stage_in``: READY until STAGED_IN (0 when nothing is staged in: both
  states are entered in the submitting commit);
* ``run_delay``: STAGED_IN until the *last* attempt entered RUNNING: the
  whole wait for a slot, earlier failed attempts and their restarts
  included (preprocessing too);
* ``run``: the last attempt's RUNNING until it left RUNNING;
* ``stage_out``: RUN_DONE until JOB_FINISHED (postprocessing included; 0
  when nothing is staged out);
* ``total``: created until the task's final state (FAILED and KILLED too).

A phase that did not happen (a task killed before it ran, one still running)
is None. For a finished task the phases add up to ``total``. Times are the
controller's clock when it committed each transition (the pilot's start and
end reach it within a round trip), so ``run`` includes that round trip.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .states import FINAL, TaskState

S = TaskState

_LEAVE_RUNNING = frozenset({S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT, S.KILLED, S.FAILED})


@dataclass(frozen=True)
class Phases:
    """Seconds spent in each phase of one task (None: the phase did not happen)."""

    parents: float | None = None
    stage_in: float | None = None
    run_delay: float | None = None
    run: float | None = None
    stage_out: float | None = None
    total: float | None = None
    attempts: int = 0
    """How many times the task entered RUNNING."""
    created: float | None = None
    ended: float | None = None
    """When the task reached its final state (None while it is live)."""
    runs: tuple[tuple[float, float | None], ...] = ()
    """Every RUNNING interval (start, end), end None while it still runs."""


def phases(events: Iterable[tuple[str, str, float]]) -> Phases:
    """A task's phases from its events ``(from_state, to_state, time)`` in commit order.

    Raises ValueError on an unknown state name. Events may be missing at the
    start (a pruned log): phases whose start is unknown are None.
    """
    created: float | None = None
    ready = staged_in = run_done = ended = None
    last_start: float | None = None
    last_run: float | None = None
    runs: list[tuple[float, float | None]] = []
    open_start: float | None = None
    for src_name, dst_name, t in events:
        src, dst = S(src_name), S(dst_name)
        if src == S.CREATED and created is None:
            created = t
        if src == S.RUNNING and open_start is not None and dst in _LEAVE_RUNNING:
            runs.append((open_start, t))
            last_run = t - open_start
            open_start = None
        if dst == S.READY:
            ready = t
        elif dst == S.STAGED_IN:
            staged_in = t
        elif dst == S.RUNNING:
            open_start = last_start = t
            last_run = None
        elif dst == S.RUN_DONE:
            run_done = t
        if dst in FINAL:
            ended = t
    if open_start is not None:
        runs.append((open_start, None))

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else max(0.0, b - a)

    finished_out = ended if run_done is not None and ended is not None else None
    return Phases(
        parents=span(created, ready), stage_in=span(ready, staged_in),
        run_delay=span(staged_in, last_start), run=last_run,
        stage_out=span(run_done, finished_out), total=span(created, ended),
        attempts=len(runs), created=created, ended=ended, runs=tuple(runs))


# ---------------------------------------------------------------------- reports


class PhaseRow(Protocol):
    """What the reports read of one task (:class:`~tidewater.proto.TaskPhases` has it)."""

    @property
    def site(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def tags(self) -> dict[str, str]: ...
    @property
    def cores(self) -> int: ...
    @property
    def stage_in(self) -> float | None: ...
    @property
    def run_delay(self) -> float | None: ...
    @property
    def run(self) -> float | None: ...
    @property
    def stage_out(self) -> float | None: ...
    @property
    def total(self) -> float | None: ...
    @property
    def ended(self) -> float | None: ...
    @property
    def runs(self) -> Sequence[tuple[float, float | None]]: ...


@dataclass(frozen=True)
class LatencyRow:
    """One route's medians in seconds (None: no task of the route had the phase)."""

    site: str
    tag: str | None
    """The value of the ``by_tag`` key (None when not grouped by a tag)."""
    tasks: int
    stage_in: float | None
    run_delay: float | None
    run: float | None
    stage_out: float | None
    total: float | None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def latency_table(rows: Iterable[PhaseRow], *, by_tag: str | None = None,
                  finished_only: bool = True) -> list[LatencyRow]:
    """Median seconds of each phase per route: per site, and per value of the
    ``by_tag`` key when given (tasks without that tag are grouped under ``""``).

    Only tasks that finished (JOB_FINISHED) count unless ``finished_only`` is
    False. Rows are sorted by site then tag.
    """
    groups: dict[tuple[str, str | None], list[PhaseRow]] = defaultdict(list)
    for r in rows:
        if finished_only and r.state != S.JOB_FINISHED:
            continue
        tag = r.tags.get(by_tag, "") if by_tag is not None else None
        groups[(r.site, tag)].append(r)
    out = []
    for (site, tag), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        def med(name: str, members: list[PhaseRow] = members) -> float | None:
            return _median([v for m in members if (v := getattr(m, name)) is not None])
        out.append(LatencyRow(site=site, tag=tag, tasks=len(members), stage_in=med("stage_in"),
                              run_delay=med("run_delay"), run=med("run"),
                              stage_out=med("stage_out"), total=med("total")))
    return out


Series = list[tuple[float, float]]
"""(time, value) points in time order."""


def _bins(lo: float, hi: float, width: float) -> list[float]:
    if width <= 0:
        raise ValueError(f"the bin width must be positive, not {width}")
    n = max(1, math.ceil((hi - lo) / width))
    return [lo + i * width for i in range(n + 1)]


def throughput(rows: Iterable[PhaseRow], *, bin_seconds: float = 60.0,
               start: float | None = None, cumulative: bool = True) -> dict[str, Series]:
    """Tasks finished (JOB_FINISHED) over time, per site.

    Each site's series has one point per bin edge from ``start`` (default:
    the first finish of any site) to past the last finish: with
    ``cumulative`` (Balsam's ``throughput_report``) the tasks finished by
    that time, else the tasks finished in the bin that ends there. Raises
    ValueError if ``bin_seconds`` is not positive.
    """
    ends: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.state == S.JOB_FINISHED and r.ended is not None:
            ends[r.site].append(r.ended)
    if not ends:
        return {}
    lo = start if start is not None else min(min(v) for v in ends.values())
    hi = max(max(v) for v in ends.values())
    edges = _bins(lo, hi, bin_seconds)
    if edges[-1] <= hi:
        edges.append(edges[-1] + bin_seconds)
    out: dict[str, Series] = {}
    for site in sorted(ends):
        times = sorted(ends[site])
        series: Series = []
        i = 0
        done_before = 0
        for edge in edges:
            while i < len(times) and times[i] < edge:
                i += 1
            series.append((edge, float(i if cumulative else i - done_before)))
            done_before = i
        out[site] = series
    return out


def utilization(rows: Iterable[PhaseRow], *, now: float, bin_seconds: float = 60.0,
                start: float | None = None, unit: str = "cores",
                capacity: dict[str, float] | None = None) -> dict[str, Series]:
    """Busy resources over time per site, from the tasks' RUNNING intervals.

    For each bin ``[t, t + bin_seconds)`` the value at ``t`` is the average
    over the bin of the tasks running (``unit="tasks"``) or of the cores they
    hold (``unit="cores"``, each task's cores). With ``capacity`` (a site's
    cores or task slots) the values are that fraction; the store does not
    keep the pilots' cores over time, so without it these are counts, not a
    fraction. Intervals still open end at ``now``. Raises ValueError on a bad
    unit or bin width.
    """
    if unit not in ("cores", "tasks"):
        raise ValueError(f"unit must be 'cores' or 'tasks', not {unit!r}")
    spans: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        weight = float(max(1, r.cores)) if unit == "cores" else 1.0
        for a, b in r.runs:
            spans[r.site].append((a, now if b is None else b, weight))
    if not spans:
        return {}
    lo = start if start is not None else min(a for v in spans.values() for a, _, _ in v)
    hi = max(b for v in spans.values() for _, b, _ in v)
    edges = _bins(lo, hi, bin_seconds)[:-1] or [lo]
    out: dict[str, Series] = {}
    for site in sorted(spans):
        busy = [0.0] * len(edges)
        for a, b, w in spans[site]:
            first = max(0, int((a - lo) // bin_seconds))
            for k in range(first, len(edges)):
                e0 = edges[k]
                e1 = e0 + bin_seconds
                if e0 >= b:
                    break
                overlap = min(b, e1) - max(a, e0)
                if overlap > 0:
                    busy[k] += w * overlap
        cap = (capacity or {}).get(site)
        series: Series = []
        for e, v in zip(edges, busy, strict=True):
            value = v / bin_seconds
            series.append((e, value / cap if cap else value))
        out[site] = series
    return out


def route_label(row: LatencyRow, by_tag: str | None) -> str:
    """``site`` or ``tag→site`` (Balsam's "APS→Theta") for a printed table."""
    if by_tag is None or row.tag is None:
        return row.site
    return f"{row.tag or '(none)'}→{row.site}"
