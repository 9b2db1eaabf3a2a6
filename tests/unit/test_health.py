"""Site health, the submit warning and the waiting notices: pure functions and the core."""

from __future__ import annotations

import pytest

from tidewater import proto as P
from tidewater.controller import requests
from tidewater.controller.health import (
    DEGRADED,
    DOWN,
    UP,
    SiteSigns,
    site_health,
    submit_warning,
)
from tidewater.controller.state import Stored
from tidewater.progress import waiting_notices

from .test_tasks import ALICE, CLIENT, PILOT, Core, spec

NOW = 10_000.0


def signs(**kw: object) -> SiteSigns:
    base: dict[str, object] = {"agent_connected": False, "agent_seen": 0.0, "had_agent": False,
                               "pilots": 0, "pilots_away": 0, "pilot_seen": 0.0}
    base.update(kw)
    return SiteSigns(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "state", "words"), [
    ({"agent_connected": True, "pilots": 2}, UP, "agent and 2 pilots connected"),
    ({"agent_connected": True}, UP, "tasks wait for a batch job"),
    ({"pilots": 1}, UP, "1 pilot connected (no agent)"),
    ({"pilots": 3, "had_agent": True, "agent_seen": NOW - 42}, DEGRADED,
     "agent gone; agent last heard 42 s ago; 3 pilots connected"),
    ({}, DOWN, "no agent and no pilot connected: tasks will wait"),
    ({"pilots_away": 2, "pilot_seen": NOW - 5}, DOWN, "2 pilots away; a pilot last heard 5 s ago"),
])
def test_a_site_is_up_degraded_or_down_and_says_why(kw: dict[str, object], state: str,
                                                    words: str) -> None:
    h = site_health(signs(**kw), NOW)
    assert h.state == state
    for part in words.split("; "):
        assert part in h.reason


def test_only_a_site_that_cannot_run_tasks_as_asked_warns_at_submit() -> None:
    assert submit_warning("aps", site_health(signs(agent_connected=True), NOW)) is None
    assert submit_warning("aps", site_health(signs(), NOW)) == (
        "site aps has no agent and no pilot connected: tasks will wait")
    degraded = submit_warning("aps", site_health(signs(pilots=1, had_agent=True), NOW))
    assert degraded is not None and "lost its agent" in degraded


def info(tid: int, state: str, site: str = "aps") -> P.TaskInfo:
    return P.TaskInfo(id=tid, app="a", site=site, state=state, tags={}, params={}, priority=0,
                      attempt=0, retries=0, created_at=0.0)


def test_waiting_notices_name_what_each_site_is_waiting_for() -> None:
    sites = [P.SiteInfo(name="aps", created_at=0, health=DOWN,
                        health_reason="no agent and no pilot connected: tasks will wait"),
             P.SiteInfo(name="hpc", created_at=0, health=UP, health_reason="agent connected")]
    notices = waiting_notices(4, [info(1, "READY"), info(2, "READY"),
                                  info(3, "RUNNING", "hpc"), info(4, "AWAITING_PARENTS", "hpc")],
                              sites, 61.2)
    assert [n.trouble for n in notices] == [True, False]
    assert notices[0].text == (
        "still waiting after 61 s for 4 tasks: 2 READY on site aps -- site aps is down: "
        "no agent and no pilot connected: tasks will wait")
    assert notices[1].text == (
        "still waiting after 61 s for 4 tasks: 1 AWAITING_PARENTS, 1 RUNNING on site hpc")
    assert waiting_notices(0, [], sites, 5.0) == []


# ---------------------------------------------------------------------- through the core

def test_the_core_tells_health_from_its_pilots() -> None:
    core = Core()
    (site,) = core.state.registry.owned_sites(ALICE)
    assert core.state.site_health(site.id, core.now).state == DOWN
    rec = core.pilot()
    up = core.state.site_info(site, core.now)
    assert up.health == UP
    assert [(p.pilot_id, p.connected, p.last_seen) for p in up.pilot_list] == [
        ("p", True, core.now)]
    core.run(core.state.pilot_gone(rec, PILOT, bye=False, now=core.now + 1))
    after = core.state.site_info(site, core.now + 2)
    assert after.health == DOWN and "1 pilot away" in after.health_reason
    assert [(p.pilot_id, p.connected) for p in after.pilot_list] == [("p", False)]


def submitted(core: Core) -> P.Submitted:
    msg = P.Submit(req_id=10, tasks=[spec()])
    plan = requests.plan_submit(core.state, ALICE, msg, core.now)
    core.run(requests.submit(core.state, ALICE, CLIENT, msg, plan, Stored(), core.now))
    (reply,) = core.take(CLIENT, P.Submitted)
    return reply


def test_submitted_carries_the_warning_only_while_the_site_is_down() -> None:
    core = Core()
    assert submitted(core).warnings == [
        "site s has no agent and no pilot connected: tasks will wait"]
    core.pilot()
    assert submitted(core).warnings == []
