"""Which site runs a task submitted to several: routing policies. Pure.

A Submit may name one site, a list of them, or ``"any"`` (every site of the
user that has the app). For a list, the controller describes each candidate
as a :class:`SiteState` -- numbers it already keeps, recorded at the moment
of the submit -- and a policy, a plain function of those records, the task's
:class:`Need` and ``now``, picks one. The choice and every candidate's
numbers come back as a :class:`~tidewater.proto.Route`, stored with the task
so ``tidewater show`` can say why it went where it went.

Policies (:data:`POLICIES`):

* ``earliest-start`` (the default): the candidate whose estimated finish is
  soonest. For a site that is not down::

      wait     = 0                          if free cores on connected pilots
                                               cover the queued cores and this task
               = (queued + task - free) / cores * run
                                            if pilots are connected (the backlog
                                               drains at cores per run time)
               = queue_wait                 if no pilot is connected but the agent
                                               can start a batch job (the observed
                                               batch-queue wait, or 600 s unknown)
               = infinity                   otherwise (nothing can run it)
      transfer = input bytes not already on the site / transfer rate into it
      start    = wait + transfer
      finish   = start + run

  where ``run`` is the measured mean run time of the app on that site (an
  exponentially weighted mean of finished tasks' started..finished), else
  the task's ``wall_time``, else 60 s. Ties go to the site named first.
* ``shortest-backlog`` (Balsam's): the fewest queued-or-running tasks per
  connected core (a site without cores counts its tasks as if it had one);
  ties by name.
* ``round-robin``: the next candidate, by name, after the one the owner's
  last routed task went to; the cursor is passed in and returned.

A ``down`` site (no agent, no pilot: :mod:`.health`) is never chosen while
another candidate is not down; when every one is down the first by name is
taken and the route says so (its tasks wait there, as a Submit to a down
site does). Estimates that are infinite (no way to start) are sent as None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import proto as P
from ..errors import InvalidRequest
from .health import DOWN

EARLIEST_START, SHORTEST_BACKLOG, ROUND_ROBIN = "earliest-start", "shortest-backlog", "round-robin"
POLICIES = (EARLIEST_START, SHORTEST_BACKLOG, ROUND_ROBIN)
DEFAULT_POLICY = EARLIEST_START

DEFAULT_RUN_TIME = 60.0
"""Seconds assumed for a task of an app never measured on a site, without ``wall_time``."""
DEFAULT_QUEUE_WAIT = 600.0
"""Seconds assumed for a batch job to start on a site never seen starting one."""
DEFAULT_TRANSFER_RATE = 50e6
"""Bytes per second assumed into a site whose transfers were never measured."""
EWMA_WEIGHT = 0.3
"""Weight of the newest sample in the measured means."""


@dataclass(frozen=True)
class SiteState:
    """One candidate site as the controller saw it at the moment of routing."""

    name: str
    health: str
    """``up``, ``degraded`` or ``down`` (:mod:`.health`)."""
    cores: int = 0
    """Cores of its connected pilots."""
    free_cores: int = 0
    """Of those, cores no task occupies."""
    queued_tasks: int = 0
    queued_cores: int = 0
    running_tasks: int = 0
    run_time: float | None = None
    """Measured mean run time of this app here, seconds (None: never measured)."""
    queue_wait: float | None = None
    """Observed batch-queue wait (submitted to started), seconds (None: never seen)."""
    can_grow: bool = False
    """An agent is connected: its autoscaler (or a user) can have nodes added."""
    transfer_rate: float | None = None
    """Measured bytes per second into the site (None: never measured)."""


@dataclass(frozen=True)
class Need:
    """What routing knows of the task itself."""

    cores: int = 1
    wall_time: float | None = None
    input_bytes: int = 0
    """Known size of its inputs (inline data, parents' outputs of known size)."""
    held: dict[str, int] = field(default_factory=dict)
    """Of those, bytes already on a site (a parent's output left there), by site name."""


def estimate(s: SiteState, need: Need) -> P.RouteEstimate:
    """One candidate's numbers under ``earliest-start`` (see the module docstring)."""
    run = s.run_time if s.run_time is not None else (need.wall_time or DEFAULT_RUN_TIME)
    moving = max(0, need.input_bytes - need.held.get(s.name, 0))
    rate = s.transfer_rate if s.transfer_rate else DEFAULT_TRANSFER_RATE
    transfer = moving / rate
    backlog = s.queued_tasks + s.running_tasks
    if s.health == DOWN:
        return P.RouteEstimate(site=s.name, health=s.health, start=None, finish=None,
                               backlog=backlog, transfer=transfer, run=run,
                               note="down: no agent and no pilot", cores=s.cores)
    if s.cores > 0:
        short = s.queued_cores + need.cores - s.free_cores
        wait = 0.0 if short <= 0 else short / s.cores * run
        note = "free cores" if short <= 0 else f"behind {s.queued_cores} queued cores"
    elif s.can_grow:
        wait = s.queue_wait if s.queue_wait is not None else DEFAULT_QUEUE_WAIT
        note = "no pilot: waits for a batch job" + ("" if s.queue_wait is not None
                                                     else " (queue wait not yet seen)")
    else:
        wait, note = math.inf, "no pilot and no agent to start one"
    start = wait + transfer
    return P.RouteEstimate(site=s.name, health=s.health, start=_finite(start),
                           finish=_finite(start + run),
                           backlog=backlog, transfer=transfer, run=run, note=note,
                           cores=s.cores)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def _finish(e: P.RouteEstimate) -> float:
    return math.inf if e.finish is None else e.finish


def _usable(sites: list[SiteState]) -> list[SiteState]:
    up = [s for s in sites if s.health != DOWN]
    return sorted(up or sites, key=lambda s: s.name)


def _route(policy: str, chosen: str, ests: list[P.RouteEstimate], now: float,
           all_down: bool) -> P.Route:
    return P.Route(policy=policy, chosen=chosen, time=now,
                   candidates=sorted(ests, key=lambda e: e.site),
                   reason="every candidate is down" if all_down else "")


def earliest_start(sites: list[SiteState], need: Need, now: float) -> P.Route:
    """The candidate with the soonest estimated finish. Raises InvalidRequest if none."""
    _check(sites)
    ests = {s.name: estimate(s, need) for s in sites}
    usable = _usable(sites)
    best = min(usable, key=lambda s: (_finish(ests[s.name]), s.name))
    return _route(EARLIEST_START, best.name, list(ests.values()), now,
                  usable[0].health == DOWN)


def shortest_backlog(sites: list[SiteState], need: Need, now: float) -> P.Route:
    """The fewest queued-or-running tasks per connected core. Raises InvalidRequest if none."""
    _check(sites)
    ests = {s.name: estimate(s, need) for s in sites}
    usable = _usable(sites)
    best = min(usable, key=lambda s: ((s.queued_tasks + s.running_tasks) / max(s.cores, 1),
                                      s.name))
    return _route(SHORTEST_BACKLOG, best.name, list(ests.values()), now,
                  usable[0].health == DOWN)


def round_robin(sites: list[SiteState], need: Need, now: float, cursor: int
                ) -> tuple[P.Route, int]:
    """The candidate after the last one chosen; the cursor to pass next time."""
    _check(sites)
    usable = _usable(sites)
    pick = usable[cursor % len(usable)]
    return (_route(ROUND_ROBIN, pick.name, [estimate(s, need) for s in sites], now,
                   pick.health == DOWN), cursor + 1)


def choose(policy: str, sites: list[SiteState], need: Need, now: float, cursor: int = 0
           ) -> tuple[P.Route, int]:
    """Route by the named policy; the route and the round-robin cursor after it.

    Raises InvalidRequest for an unknown policy or no candidates.
    """
    policy = policy or DEFAULT_POLICY
    if policy == EARLIEST_START:
        return earliest_start(sites, need, now), cursor
    if policy == SHORTEST_BACKLOG:
        return shortest_backlog(sites, need, now), cursor
    if policy == ROUND_ROBIN:
        return round_robin(sites, need, now, cursor)
    raise InvalidRequest(f"unknown routing policy {policy!r} (policies: {', '.join(POLICIES)})")


def check_policy(policy: str) -> None:
    """Raises InvalidRequest for a policy name that is not one of :data:`POLICIES`."""
    if policy and policy not in POLICIES:
        raise InvalidRequest(
            f"unknown routing policy {policy!r} (policies: {', '.join(POLICIES)})")


def _check(sites: list[SiteState]) -> None:
    if not sites:
        raise InvalidRequest("no candidate site to route the task to")


class Measures:
    """Running means the controller keeps for routing.

    Run times per (site, app), fed from each finished task's
    started..finished; transfer rates into each site, fed from each task's
    stage-in: the bytes the agent reports over the time from the push of the
    transfers to the report (so an agent's queue counts against its rate,
    as it does against a task). Bounded by the (site, app) pairs, which are
    registered by hand, and by the tasks whose stage-in is under way.
    """

    def __init__(self) -> None:
        self.run: dict[tuple[int, str], float] = {}
        self.rate: dict[int, float] = {}
        self.staging_since: dict[int, float] = {}
        """Task -> when its stage-in was pushed to its site's agent."""

    def stage_in_sent(self, task_id: int, now: float) -> None:
        self.staging_since.setdefault(task_id, now)

    def staged_in(self, site_id: int, task_id: int, size: int, now: float) -> None:
        since = self.staging_since.pop(task_id, None)
        if since is None or size <= 0 or now <= since:
            return
        sample = size / (now - since)
        old = self.rate.get(site_id)
        self.rate[site_id] = sample if old is None else \
            EWMA_WEIGHT * sample + (1 - EWMA_WEIGHT) * old

    def ran(self, site_id: int, app: str, seconds: float) -> None:
        if seconds < 0:
            return
        old = self.run.get((site_id, app))
        self.run[(site_id, app)] = seconds if old is None else \
            EWMA_WEIGHT * seconds + (1 - EWMA_WEIGHT) * old


def queue_wait(waits: list[float]) -> float | None:
    """The observed batch-queue wait from recent jobs' waits, oldest first (None: none)."""
    if not waits:
        return None
    mean = waits[0]
    for w in waits[1:]:
        mean = EWMA_WEIGHT * w + (1 - EWMA_WEIGHT) * mean
    return mean
