"""Whether a site can run tasks now, and why not: the truth ``site ls`` shows. Pure.

A site is one of:

* ``up`` -- something can run its tasks: its agent is connected (it can
  start batch jobs), or pilots are connected and the site never had an agent
  (pilots started by hand);
* ``degraded`` -- pilots are connected but the agent the site had is gone:
  tasks run, but no batch job will be started, renewed or cancelled;
* ``down`` -- neither an agent nor a pilot is connected: tasks wait.

Each comes with a sentence saying why, naming when the agent and the
pilots were last heard from, so an operator does not have to guess
(Balsam showed sites as active when their agent was dead).
"""

from __future__ import annotations

from typing import NamedTuple

from ..durations import format_ago

UP, DEGRADED, DOWN = "up", "degraded", "down"


class SiteSigns(NamedTuple):
    """What the controller knows of a site's peers at one moment."""

    agent_connected: bool
    agent_seen: float
    """When the agent last said anything (0: not since the controller started)."""
    had_agent: bool
    """The site has had an agent: one was seen, or batch jobs were made for it."""
    pilots: int
    """Pilots connected now."""
    pilots_away: int
    """Pilots whose connection closed, or not back since a restart, within their lease."""
    pilot_seen: float
    """When any of its pilots last said anything (0: never since the controller started)."""


class Health(NamedTuple):
    state: str
    reason: str


def _pilots(n: int) -> str:
    return f"{n} pilot{'' if n == 1 else 's'}"


def site_health(s: SiteSigns, now: float) -> Health:
    """The site's state and the sentence that explains it."""
    agent_last = f"; agent last heard {format_ago(s.agent_seen, now)}" if s.agent_seen else ""
    away = f", {_pilots(s.pilots_away)} away" if s.pilots_away else ""
    if s.agent_connected:
        if s.pilots:
            return Health(UP, f"agent and {_pilots(s.pilots)} connected{away}")
        return Health(UP, f"agent connected, no pilot yet: tasks wait for a batch job{away}")
    if s.pilots:
        if s.had_agent:
            return Health(DEGRADED, f"agent gone{agent_last}; {_pilots(s.pilots)} connected "
                                    f"run tasks but no batch job will be started{away}")
        return Health(UP, f"{_pilots(s.pilots)} connected (no agent){away}")
    pilot_last = (f"; a pilot last heard {format_ago(s.pilot_seen, now)}" if s.pilot_seen else "")
    return Health(DOWN, f"no agent and no pilot connected: tasks will wait{away}{agent_last}"
                        f"{pilot_last}")


def submit_warning(site: str, health: Health) -> str | None:
    """What a Submit to a site in this state is told (None: nothing to say)."""
    if health.state == DOWN:
        return f"site {site} has no agent and no pilot connected: tasks will wait"
    if health.state == DEGRADED:
        return f"site {site} has lost its agent: its connected pilots run tasks, but no " \
               f"batch job will be started for them"
    return None
