"""The autoscaler's decision: which batch jobs a site needs now. Pure.

The agent calls :func:`decide` whenever the controller's demand or the
batch jobs change; it gets back at most one job to submit and the queued
jobs to cancel. It cannot run away:

* never more than ``max_queued_jobs`` jobs waiting in the scheduler (a
  scheduler that holds everything stops it there);
* never more than ``max_total_nodes`` nodes in live jobs;
* after a job the scheduler refused, it waits (exponential backoff, capped)
  before asking again, so a scheduler that rejects everything sees a
  handful of attempts, not a storm;
* every job fits the site's limits (queue, nodes per job, wall time).

Capacity counts what is already coming: idle pilot nodes, jobs not yet
running, and nodes of running jobs whose pilots have not connected yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscaleSettings:
    enabled: bool = False
    queue: str = ""
    project: str = ""
    wall_time_min: int = 30
    min_nodes_per_job: int = 1
    max_nodes_per_job: int = 1
    max_queued_jobs: int = 1
    max_total_nodes: int = 4
    cores_per_node: int = 1
    gpus_per_node: int = 0
    retry_after: float = 30.0
    """Wait after a refused submission; doubles per refusal in a row, up to ``retry_cap``."""
    retry_cap: float = 600.0
    max_wall_time_min: int | None = None
    """The longest job the site allows; jobs stretch up to it for long tasks."""
    wall_margin: float = 30.0
    """Seconds of a job a pilot does not use (it stops this long before the end)."""


@dataclass(frozen=True)
class Demand:
    tasks: int = 0
    cores: int = 0
    gpus: int = 0
    node_demand: float = 0.0
    idle_nodes: int = 0
    busy_nodes: int = 0
    max_wall_time: float | None = None


@dataclass(frozen=True)
class JobView:
    id: int
    state: str
    nodes: int
    autoscaled: bool = False
    ended_at: float | None = None
    scheduler_id: str = ""


@dataclass(frozen=True)
class Submit:
    nodes: int
    wall_time_min: int
    queue: str
    project: str


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class Decision:
    submit: Submit | None = None
    cancel: tuple[int, ...] = ()
    why: str = ""
    retry_at: float | None = None
    """When a backoff ends (the driver looks again then)."""


_WAITING = ("pending_submission", "queued")


def nodes_needed(s: AutoscaleSettings, d: Demand) -> int:
    """Nodes the runnable tasks would fill."""
    if d.tasks <= 0:
        return 0
    by_cores = d.cores / max(s.cores_per_node, 1)
    by_gpus = d.gpus / s.gpus_per_node if s.gpus_per_node > 0 else 0.0
    return max(1, math.ceil(d.node_demand + max(by_cores, by_gpus)))


def decide(s: AutoscaleSettings, d: Demand, jobs: Sequence[JobView], now: float) -> Decision:
    """What to do now (see the module docstring for the guarantees)."""
    if not s.enabled:
        return Decision(why="autoscaling is off")
    waiting = [j for j in jobs if j.state in _WAITING]
    live = [j for j in jobs if j.state in (*_WAITING, "running")]
    running_nodes = sum(j.nodes for j in live if j.state == "running")
    connected = d.idle_nodes + d.busy_nodes
    starting = max(0, running_nodes - connected)  # running jobs whose pilots are on their way
    coming = sum(j.nodes for j in waiting) + starting
    need = nodes_needed(s, d)
    shortfall = need - d.idle_nodes - coming

    if need == 0:
        cancel = tuple(j.id for j in waiting
                       if j.autoscaled and j.state == "queued" and j.scheduler_id)
        return Decision(cancel=cancel, why="no runnable work" + (
            f": cancelling {len(cancel)} queued jobs" if cancel else ""))
    if shortfall <= 0:
        return Decision(why=f"{need} nodes needed, {d.idle_nodes} idle and {coming} coming")

    failures = _refusals_in_a_row(jobs)
    if failures:
        last = max(j.ended_at or 0.0 for j in jobs if j.state == "submit_failed")
        wait = min(s.retry_after * 2 ** (failures - 1), s.retry_cap)
        if now < last + wait:
            return Decision(why=f"{failures} refused submissions in a row: waiting "
                                f"{last + wait - now:.0f} s", retry_at=last + wait)
    if len(waiting) >= s.max_queued_jobs:
        return Decision(why=f"{len(waiting)} jobs already waiting (max {s.max_queued_jobs})")
    in_use = sum(j.nodes for j in live)
    room = s.max_total_nodes - in_use
    if room < max(s.min_nodes_per_job, 1):
        return Decision(why=f"{in_use} nodes in jobs already (max {s.max_total_nodes})")
    nodes = max(s.min_nodes_per_job, min(shortfall, s.max_nodes_per_job, room))
    if nodes > room:
        return Decision(why=f"no room for {nodes} more nodes (max {s.max_total_nodes})")
    return Decision(
        submit=Submit(nodes=nodes, wall_time_min=job_wall_time(s, d), queue=s.queue,
                      project=s.project),
        why=f"{need} nodes needed, {d.idle_nodes} idle and {coming} coming",
    )


def job_wall_time(s: AutoscaleSettings, d: Demand) -> int:
    """The settings' wall time, stretched (up to the site's limit) for the longest task."""
    wall = s.wall_time_min
    if d.max_wall_time:
        wall = max(wall, math.ceil((d.max_wall_time + s.wall_margin) / 60))
    if s.max_wall_time_min is not None:
        wall = min(wall, s.max_wall_time_min)
    return wall


def _refusals_in_a_row(jobs: Sequence[JobView]) -> int:
    """Refused autoscaled submissions since the last one the scheduler accepted."""
    n = 0
    for j in sorted((j for j in jobs if j.autoscaled), key=lambda j: j.id, reverse=True):
        if j.state == "submit_failed":
            n += 1
        elif j.state != "pending_submission":
            break
    return n
