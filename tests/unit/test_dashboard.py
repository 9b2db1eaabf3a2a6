"""The dashboard's pure parts: sessions, the list's filters, live counts, and the JSON shapes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tidewater import proto as P
from tidewater.config import ControllerConfig
from tidewater.controller import dashboard
from tidewater.controller.dashboard.sessions import SessionBook
from tidewater.controller.dashboard.views import (
    STATES,
    LiveCounts,
    parse_list_query,
    site_json,
    task_detail,
    window_args,
)
from tidewater.controller.model import Principal
from tidewater.errors import ConfigError, InvalidRequest
from tidewater.tls import check_listen

ALICE = Principal(user_id=1, user="alice", token_id="t1")


# ---------------------------------------------------------------------- sessions


def test_a_session_lives_until_its_ttl_or_its_tokens_expiry_whichever_is_first() -> None:
    book = SessionBook(ttl=100)
    s, dropped = book.open(ALICE, now=1000)
    assert dropped == [] and s.expires_at == 1100
    assert book.get(s.id, now=1099) is s
    assert book.get(s.id, now=1100) is None
    assert book.expired(1100) == [s] and book.sessions == {}
    short = Principal(user_id=1, user="alice", token_id="t1", expires_at=1010)
    s2, _ = book.open(short, now=1000)
    assert s2.expires_at == 1010


def test_session_ids_are_random_and_unguessable_values_find_nothing() -> None:
    book = SessionBook()
    ids = {book.open(ALICE, now=0)[0].id for _ in range(50)}
    assert len(ids) == 50 and all(len(i) >= 43 for i in ids)
    assert book.get("", now=0) is None
    assert book.get(None, now=0) is None
    assert book.get("forged", now=0) is None


def test_logout_ends_the_session_and_the_oldest_goes_past_the_bound() -> None:
    book = SessionBook(max_sessions=2)
    a, _ = book.open(ALICE, now=0)
    b, _ = book.open(ALICE, now=1)
    c, dropped = book.open(ALICE, now=2)
    assert dropped == [a] and set(book.sessions) == {b.id, c.id}
    assert book.close(b.id) is b and book.get(b.id, now=2) is None
    assert book.close(b.id) is None
    with pytest.raises(ValueError, match="positive"):
        SessionBook(ttl=0)


# ---------------------------------------------------------------------- list filters


def test_list_query_parses_every_filter() -> None:
    q = parse_list_query({"state": "FAILED,RUN_ERROR", "app": "fit", "site": "theta",
                          "after": "40", "limit": "10"}, ["beam=1", " run = 7 "])
    assert q.filter == P.TaskFilter(states=["FAILED", "RUN_ERROR"], tags={"beam": "1", "run": "7"},
                                    app="fit", site="theta")
    assert (q.after, q.limit) == (40, 10)
    empty = parse_list_query({})
    assert empty.filter == P.TaskFilter() and (empty.after, empty.limit) == (0, 50)


@pytest.mark.parametrize(("query", "tags", "message"), [
    ({"state": "DONE"}, [], "unknown state 'DONE'"),
    ({}, ["novalue"], "a tag filter is key=value, not 'novalue'"),
    ({}, ["=1"], "a tag filter is key=value"),
    ({"after": "x"}, [], "after must be a whole number, not 'x'"),
    ({"after": "-1"}, [], "after must be between 0"),
    ({"limit": "0"}, [], "limit must be between 1 and 500, not 0"),
    ({"limit": "501"}, [], "limit must be between 1 and 500"),
])
def test_bad_filters_are_refused_saying_why(query: dict[str, str], tags: list[str],
                                           message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_list_query(query, tags)


def test_chart_window_and_bin() -> None:
    assert window_args({}) == (3600, 60)
    assert window_args({"window": "600", "bin": "30"}) == (600, 30)
    with pytest.raises(InvalidRequest, match="bin must be between 1 and 600"):
        window_args({"window": "600", "bin": "601"})


# ---------------------------------------------------------------------- live counts


def ev(task: int, src: str, dst: str) -> P.TaskEvent:
    return P.TaskEvent(id=0, task_id=task, from_state=src, to_state=dst, time=0.0)


def test_counts_follow_committed_transitions_from_the_counts_read() -> None:
    c = LiveCounts()
    c.read(c.reading(), {"RUNNING": 2, "JOB_FINISHED": 5, "NOT_A_STATE": 9})
    assert c.exact
    v = c.version
    c.apply([ev(8, "CREATED", "READY"), ev(8, "READY", "STAGED_IN"),
             ev(1, "RUNNING", "RUN_DONE"), ev(1, "RUN_DONE", "JOB_FINISHED")])
    assert c.version == v + 1
    got = c.json()
    assert got["by_state"]["STAGED_IN"] == 1 and got["by_state"]["READY"] == 0
    assert got["by_state"]["RUNNING"] == 1 and got["by_state"]["JOB_FINISHED"] == 6
    assert got["total"] == 8 and list(got["by_state"]) == STATES
    c.apply([])
    assert c.version == v + 1  # nothing changed, nothing to push


def test_a_read_during_which_events_arrived_is_a_guess_until_a_quiet_one() -> None:
    c = LiveCounts()
    mark = c.reading()
    c.apply([ev(1, "RUNNING", "RUN_DONE")])  # committed while the store was read
    c.read(mark, {"RUN_DONE": 1})  # the read saw it already: a guess
    assert not c.exact and c.json()["by_state"]["RUN_DONE"] == 1
    mark = c.reading()
    c.apply([ev(1, "RUN_DONE", "JOB_FINISHED")])
    c.read(mark, {"RUN_DONE": 1})  # busy again: the guess moved by the event stays
    assert not c.exact and c.json()["by_state"]["JOB_FINISHED"] == 1
    c.read(c.reading(), {"JOB_FINISHED": 1, "READY": 4})  # quiet: exact from here
    assert c.exact and c.json()["total"] == 5
    c.apply([ev(9, "READY", "STAGED_IN")])
    assert c.json()["by_state"]["STAGED_IN"] == 1


# ---------------------------------------------------------------------- JSON shapes


def test_a_sites_slots_are_its_connected_pilots_cores_busy_and_free() -> None:
    s = P.SiteInfo(name="theta", created_at=1.0, health="up", agent_seen=5.0, pilot_seen=9.0,
                   pilot_list=[
                       P.PilotInfo(pilot_id="a", cores=4, running=3, connected=True),
                       P.PilotInfo(pilot_id="b", cores=2, running=0, connected=True),
                       P.PilotInfo(pilot_id="gone", cores=8, running=1, connected=False)])
    j = site_json(s)
    assert (j["busy"], j["free"], j["last_heard"]) == (3, 3, 9.0)
    assert [(p["id"], p["busy"], p["free"]) for p in j["pilots"]] == [
        ("a", 3, 1), ("b", 0, 2), ("gone", 1, 0)]


def test_a_task_page_has_its_timeline_and_each_attempt() -> None:
    t = P.TaskInfo(id=3, app="fit", site="theta", state="FAILED", error="exit code 7",
                   stderr_tail="boom", params={"n": 1})
    events = [("CREATED", "READY", 1.0), ("READY", "STAGED_IN", 1.0),
              ("STAGED_IN", "RUNNING", 2.0), ("RUNNING", "RUN_ERROR", 3.0),
              ("RUN_ERROR", "RESTART_READY", 3.0), ("RESTART_READY", "RUNNING", 4.0),
              ("RUNNING", "RUN_ERROR", 6.0), ("RUN_ERROR", "FAILED", 6.0)]
    d = task_detail(t, events)
    assert [a["seconds"] for a in d["attempts"]] == [1.0, 2.0]
    assert d["events"][-1] == {"from": "RUN_ERROR", "to": "FAILED", "time": 6.0}
    assert (d["error"], d["stderr_tail"], d["params"]) == ("exit code 7", "boom", {"n": 1})
    assert d["phases"]["total"] == 5.0 and not d["events_more"]


# ---------------------------------------------------------------------- listening


def test_plaintext_dashboard_off_loopback_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        check_listen(ControllerConfig(dashboard_port=8080, dashboard_host="0.0.0.0"))
    for fix in ("dashboard", "--tls-cert", "--dashboard-host 127.0.0.1", "--allow-plaintext"):
        assert fix in str(info.value)
    check_listen(ControllerConfig(dashboard_port=8080))
    check_listen(ControllerConfig(dashboard_port=8080, dashboard_host="0.0.0.0",
                                  tls_cert="c.pem", tls_key="k.pem"))
    check_listen(ControllerConfig(host="0.0.0.0", allow_plaintext=True, dashboard_port=0,
                                  dashboard_host="0.0.0.0"))


def test_the_dashboards_sessions_and_views_do_no_io() -> None:
    root = Path(dashboard.__file__).parent
    for name in ("sessions", "views"):
        tree = ast.parse((root / f"{name}.py").read_text())
        used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
        used |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and not n.level and n.module}
        assert not used & {"anyio", "aiohttp", "time", "socket", "asyncio"}, name
        assert not any(isinstance(n, ast.Await | ast.AsyncFunctionDef) for n in ast.walk(tree))


# ---------------------------------------------------------------------- where a chart starts


@pytest.mark.parametrize("ids", [[], [5], [1, 2, 3], [3, 9, 10, 40, 41, 77, 300, 301, 302],
                                 list(range(1, 200, 7))])
async def test_a_charts_window_starts_after_the_last_task_before_it(ids: list[int]) -> None:
    from tidewater.controller.dashboard.handlers import window_start

    created = {i: float(i) for i in ids}  # created_at grows with the id
    asked: list[int] = []

    async def first_after(after: int, newest: bool = False) -> tuple[int, float] | None:
        asked.append(after)
        later = [i for i in ids if i > after]
        if not later:
            return None
        i = max(later) if newest else min(later)
        return i, created[i]

    for since in [0.0, 0.5, 1.0, 2.5, 9.0, 10.0, 40.5, 301.0, 303.0, 1000.0]:
        before = [i for i in ids if created[i] < since]
        start = await window_start(first_after, since)
        # Nothing in the window is skipped; at most one task before it is read.
        assert all(i > start for i in ids if created[i] >= since), (ids, since, start)
        assert len([i for i in before if i > start]) <= 1, (ids, since, start)
    assert len(asked) < 200


def test_server_refuses_a_plaintext_dashboard_off_loopback_before_starting(
        tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tidewater.cli import main

    r = CliRunner().invoke(main, ["server", "--db", str(tmp_path / "tw.db"),
                                  "--dashboard-port", "8080", "--dashboard-host", "0.0.0.0"])
    assert r.exit_code == 2, r.output
    assert "refusing to serve the dashboard over plaintext http" in " ".join(r.output.split())
    assert not (tmp_path / "tw.db").exists()
    help_text = CliRunner().invoke(main, ["server", "--help"]).output
    assert "--dashboard-port" in help_text and "--dashboard-host" in help_text
