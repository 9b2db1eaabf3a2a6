"""Every client operation Bob can aim at Alice's objects: "not found", and nothing changes.

Alice owns two sites, an app, tasks (finished and queued, tagged), a pending
batch job, tokens and watches; Bob owns a site and a task of his own. For
each operation, one test: Bob gets ``not_found`` -- or, where listing is the
operation, a list without any of Alice's objects -- never ``forbidden``, and
every table of the store (batch jobs, tokens and the audit trail included) is
byte-identical before and after. test_isolation.py shows the same through the
library client; these go frame by frame over raw websockets.

Then the tokens: a site token is good for its own site only and never for a
client; a pilot token serves pilots of its batch job while the job lives, and
nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
from websockets.exceptions import ConnectionClosed

import tidewater
from tidewater import proto as P

from .procs import Cluster, cluster, until
from .raw import RawPeer, agent_hello, client_hello, pilot_hello, raw_peer, snapshot, user_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one controller and one Alice serve every test


@dataclass
class World:
    c: Cluster
    alice: RawPeer
    """Alice's connection, holding her watches for the whole module."""
    a_token: str
    a_site: str
    """Site token of "beamline"."""
    a_site2: str
    """Site token of "beamline2"."""
    b_token: str
    b_site: str
    a_finished: int
    a_queued: int
    a_canary: int
    """A queued task of Alice's watched by ``a_watch``; killed only by the Unwatch test."""
    a_job: int
    a_watch: int
    a_token_ids: list[str]
    b_queued: int
    b_id: int


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, module_store: str | None
                ) -> AsyncIterator[World]:
    async with cluster(tmp_path_factory.mktemp("iso"), db=module_store) as c, AsyncExitStack() as stack:
        await c.start_controller()
        await c.add_user("root")  # the first user is the admin; Alice and Bob are not
        a_token = await c.add_user("alice")
        b_token = await c.add_user("bob")
        async with tidewater.connect(c.url, token=a_token) as a:
            _s, a_site = await a.add_site("beamline")
            _s, a_site2 = await a.add_site("beamline2")
            for site in ("beamline", "beamline2"):
                await a.add_app(site, "nap", "sleep {s}")
            tags = {"owner": "alice"}
            queued = await a.submit("nap", site="beamline", params={"s": "1"}, tags=tags)
            canary = await a.submit("nap", site="beamline", params={"s": "2"}, tags=tags)
            ran = await a.submit("nap", site="beamline2", params={"s": "0"}, tags=tags)
            # A pilot of beamline2, by hand, runs one task to the end.
            async with raw_peer(c.url, pilot_hello(a_site2, "a-pilot", credit_cores=1)) as (
                    pilot, _w):
                run = await pilot.recv()
                assert isinstance(run, P.RunTasks) and run.tasks[0].task_id == ran.id
                att = run.tasks[0].attempt
                await pilot.ws.send(P.encode(P.Reports(seq=1, reports=[
                    P.Report(task_id=ran.id, attempt=att, kind="started", time=1.0),
                    P.Report(task_id=ran.id, attempt=att, kind="done", time=2.0, exit_code=0,
                             stdout_tail="secret output\n"),
                ])))
                assert await pilot.recv() == P.Ack(seq=1)
                await pilot.ws.send(P.encode(P.Bye(reason="done")))
            assert (await ran.result(timeout=10)).state == "JOB_FINISHED"
            job = await a.queue_submit("beamline", nodes=1)
        async with tidewater.connect(c.url, token=b_token) as b:
            _s, b_site = await b.add_site("bobsite")
            await b.add_app("bobsite", "nap", "sleep {s}")
        async with raw_peer(c.url, client_hello(b_token)) as (bob, _w):
            mine = await bob.request(bobs_submit)
            assert isinstance(mine, P.Submitted)
        alice, _w = await stack.enter_async_context(raw_peer(c.url, client_hello(a_token)))
        watching = await alice.request(lambda i: P.Watch(req_id=i, filter=P.TaskFilter(
            ids=[canary.id])))
        assert isinstance(watching, P.Watching)
        a_id = user_id(c, "alice")
        token_ids = [str(r[0]) for r in c.rows("SELECT id FROM tokens WHERE user_id = ?",
                                              (a_id,))]
        yield World(c, alice, a_token, a_site, a_site2, b_token, b_site, ran.id, queued.id,
                    canary.id, job.id, watching.watch_id, token_ids, mine.ids[0],
                    user_id(c, "bob"))


def bobs_submit(req_id: int) -> P.Submit:
    """Bob's own queued task. Sent again, it changes nothing and is answered only after
    everything queued before it is committed: a barrier."""
    return P.Submit(req_id=req_id, key="bob-barrier", tasks=[
        P.TaskSpec(app="nap", site="bobsite", params={"s": "1"})])


# --------------------------------------------------------------------------
# The matrix: (operation, what Bob must get)

NOT_FOUND = "not_found"
EMPTY = "empty"  # a list reply with none of Alice's objects in it
Build = Callable[[World, int], P.Msg]

OPERATIONS: dict[str, tuple[Build, str]] = {
    "query-ids-finished": (
        lambda w, i: P.Query(req_id=i, filter=P.TaskFilter(ids=[w.a_finished])), EMPTY),
    "query-ids-queued": (
        lambda w, i: P.Query(req_id=i, filter=P.TaskFilter(ids=[w.a_queued, w.a_canary])),
        EMPTY),
    "query-site": (lambda w, i: P.Query(req_id=i, filter=P.TaskFilter(site="beamline")),
                   NOT_FOUND),
    "query-tags": (lambda w, i: P.Query(req_id=i, filter=P.TaskFilter(tags={"owner": "alice"})),
                   EMPTY),
    "query-all": (lambda w, i: P.Query(req_id=i, limit=100_000), EMPTY),
    "phases-ids": (lambda w, i: P.ListPhases(req_id=i, filter=P.TaskFilter(
        ids=[w.a_finished, w.a_queued, w.a_canary])), EMPTY),
    "phases-site": (lambda w, i: P.ListPhases(req_id=i, filter=P.TaskFilter(site="beamline")),
                    NOT_FOUND),
    "phases-tags": (lambda w, i: P.ListPhases(req_id=i, filter=P.TaskFilter(
        tags={"owner": "alice"})), EMPTY),
    "phases-all": (lambda w, i: P.ListPhases(req_id=i, limit=100_000), EMPTY),
    "count-all": (lambda w, i: P.CountTasks(req_id=i), EMPTY),
    "count-ids": (lambda w, i: P.CountTasks(req_id=i, filter=P.TaskFilter(
        ids=[w.a_finished, w.a_queued, w.a_canary])), EMPTY),
    "count-tags": (lambda w, i: P.CountTasks(req_id=i, filter=P.TaskFilter(
        tags={"owner": "alice"})), EMPTY),
    "count-site": (lambda w, i: P.CountTasks(req_id=i, filter=P.TaskFilter(site="beamline")),
                   NOT_FOUND),
    "wait-finished": (lambda w, i: P.Wait(req_id=i, ids=[w.a_finished]), NOT_FOUND),
    "wait-queued": (lambda w, i: P.Wait(req_id=i, ids=[w.a_queued]), NOT_FOUND),
    "wait-mixed": (lambda w, i: P.Wait(req_id=i, ids=[w.b_queued, w.a_queued]), NOT_FOUND),
    "watch-ids": (lambda w, i: P.Watch(req_id=i, filter=P.TaskFilter(ids=[w.a_queued])),
                  NOT_FOUND),
    "watch-ids-finished": (
        lambda w, i: P.Watch(req_id=i, filter=P.TaskFilter(ids=[w.a_finished]), since_event=1),
        NOT_FOUND),
    "watch-site": (lambda w, i: P.Watch(req_id=i, filter=P.TaskFilter(site="beamline")),
                   NOT_FOUND),
    "unwatch": (lambda w, i: P.Unwatch(req_id=i, watch_id=w.a_watch), NOT_FOUND),
    "cancel-queued": (lambda w, i: P.Cancel(req_id=i, ids=[w.a_queued]), NOT_FOUND),
    "cancel-finished": (lambda w, i: P.Cancel(req_id=i, ids=[w.a_finished]), NOT_FOUND),
    # All or nothing: Bob's own task, listed first, is not cancelled either.
    "cancel-mixed": (lambda w, i: P.Cancel(req_id=i, ids=[w.b_queued, w.a_queued]), NOT_FOUND),
    "submit": (lambda w, i: P.Submit(req_id=i, tasks=[
        P.TaskSpec(app="nap", site="beamline", params={"s": "0"})]), NOT_FOUND),
    "submit-mixed": (lambda w, i: P.Submit(req_id=i, tasks=[
        P.TaskSpec(app="nap", site="bobsite", params={"s": "0"}),
        P.TaskSpec(app="nap", site="beamline", params={"s": "0"})]), NOT_FOUND),
    "add-app": (lambda w, i: P.AddApp(req_id=i, site="beamline", name="evil",
                                      command="rm -rf {x}"), NOT_FOUND),
    "replace-app": (lambda w, i: P.AddApp(req_id=i, site="beamline", name="nap",
                                          command="rm -rf {s}", replace=True), NOT_FOUND),
    "list-apps-site": (lambda w, i: P.ListApps(req_id=i, site="beamline"), EMPTY),
    "list-apps-all": (lambda w, i: P.ListApps(req_id=i), EMPTY),
    "list-sites": (lambda w, i: P.ListSites(req_id=i), EMPTY),
    "add-job": (lambda w, i: P.AddJob(req_id=i, job=P.JobSpec(site="beamline")), NOT_FOUND),
    "list-jobs-site": (lambda w, i: P.ListJobs(req_id=i, site="beamline",
                                               include_finished=True), EMPTY),
    "list-jobs-all": (lambda w, i: P.ListJobs(req_id=i, include_finished=True), EMPTY),
    "cancel-job": (lambda w, i: P.CancelJob(req_id=i, id=w.a_job), NOT_FOUND),
    "create-site-token": (lambda w, i: P.CreateToken(req_id=i, kind="site", site="beamline"),
                          NOT_FOUND),
    "revoke-token": (lambda w, i: P.RevokeToken(req_id=i, id=w.a_token_ids[0]), NOT_FOUND),
    "list-tokens": (lambda w, i: P.ListTokens(req_id=i, include_revoked=True), EMPTY),
    "list-audit": (lambda w, i: P.ListAudit(req_id=i, limit=10_000), EMPTY),
    # Bob's own task made to wait for (or be killed with) Alice's.
    "submit-parent-finished": (lambda w, i: P.Submit(req_id=i, tasks=[P.TaskSpec(
        app="nap", site="bobsite", params={"s": "0"}, parents=[w.a_finished])]), NOT_FOUND),
    "submit-parent-queued": (lambda w, i: P.Submit(req_id=i, tasks=[P.TaskSpec(
        app="nap", site="bobsite", params={"s": "0"}, parents=[w.b_queued, w.a_queued])]),
        NOT_FOUND),
    # Alice's outputs: downloaded, or taken as an input by reference.
    "download-finished": (lambda w, i: P.Download(req_id=i, task_id=w.a_finished,
                                                  path="stdout.txt"), NOT_FOUND),
    "download-queued": (lambda w, i: P.Download(req_id=i, task_id=w.a_queued, path="x"),
                        NOT_FOUND),
    "submit-input-reference": (lambda w, i: P.Submit(req_id=i, tasks=[P.TaskSpec(
        app="nap", site="bobsite", params={"s": "0"},
        inputs=[P.Input(path="x", task=w.a_finished, output="stdout.txt")])]), NOT_FOUND),
    # A task's life after it ended: retried, resubmitted, its events and its logs read.
    "retry-ids": (lambda w, i: P.Retry(req_id=i, ids=[w.a_finished]), NOT_FOUND),
    "retry-mixed": (lambda w, i: P.Retry(req_id=i, ids=[w.b_queued, w.a_queued]), NOT_FOUND),
    "retry-site": (lambda w, i: P.Retry(req_id=i, filter=P.TaskFilter(site="beamline")),
                   NOT_FOUND),
    "retry-tags": (lambda w, i: P.Retry(req_id=i, filter=P.TaskFilter(
        tags={"owner": "alice"})), EMPTY),
    "resubmit": (lambda w, i: P.Resubmit(req_id=i, ids=[w.a_finished]), NOT_FOUND),
    "events-ids": (lambda w, i: P.ListEvents(req_id=i, filter=P.TaskFilter(
        ids=[w.a_finished])), NOT_FOUND),
    "events-all": (lambda w, i: P.ListEvents(req_id=i, limit=100_000), EMPTY),
    "read-log": (lambda w, i: P.ReadLog(req_id=i, task_id=w.a_finished), NOT_FOUND),
}


def alice_in(w: World, reply: P.Msg) -> list[object]:
    """Whatever of Alice's a list reply shows Bob."""
    match reply:
        case P.TaskList(tasks=tasks):
            return [t for t in tasks if t.id in (w.a_finished, w.a_queued, w.a_canary)
                    or t.site.startswith("beamline") or t.tags.get("owner") == "alice"]
        case P.PhaseList(tasks=phases):
            return [t for t in phases if t.id in (w.a_finished, w.a_queued, w.a_canary)
                    or t.site.startswith("beamline") or t.tags.get("owner") == "alice"]
        case P.TaskCounts(by_site=by_site, by_state=by_state):
            # Bob's own task is his one queued one, on bobsite: anything else is Alice's.
            theirs = [site for site in by_site if site != "bobsite"]
            return theirs + ([by_state] if sum(by_state.values()) > 1 else [])
        case P.AppList(apps=apps):
            return [a for a in apps if a.site != "bobsite"]
        case P.SiteList(sites=sites):
            return [s for s in sites if s.name != "bobsite"]
        case P.JobList(jobs=jobs):
            return list(jobs)  # Bob has none
        case P.TokenList(tokens=tokens):
            return [t for t in tokens if t.id in w.a_token_ids or t.site.startswith("beamline")]
        case P.AuditList(entries=entries):
            return [e for e in entries if e.user != "bob"]
        case P.Retried(ids=ids, waiting=waiting):
            return [*ids, *waiting]  # Bob has no failed task either
        case P.EventList(events=events):
            return [e for e in events if e.task_id != w.b_queued]
    raise AssertionError(f"not a list reply: {reply}")


@pytest.mark.parametrize("op", list(OPERATIONS))
async def test_bob_cannot_reach_alices_objects(world: World, op: str) -> None:
    build, expected = OPERATIONS[op]
    c = world.c
    async with raw_peer(c.url, client_hello(world.b_token)) as (bob, welcome):
        assert isinstance(welcome, P.Welcome) and welcome.user == "bob"
        before = snapshot(c)
        reply = await bob.request(lambda i: build(world, i))
        # Anything Bob's request queued is committed before this barrier's answer.
        barrier = await bob.request(bobs_submit)
        assert isinstance(barrier, P.Submitted) and barrier.ids == [world.b_queued]
        assert snapshot(c) == before
        if expected == NOT_FOUND:
            assert isinstance(reply, P.Error), reply
            assert reply.code == "not_found", reply
            assert "alice" not in reply.message
        else:
            assert not isinstance(reply, P.Error), reply
            assert alice_in(world, reply) == []
        assert not [m for m in bob.seen if isinstance(m, P.Events)]
    if op == "unwatch":
        # Alice's watch is still hers: her canary's end reaches it.
        alice = world.alice
        killed = await alice.request(lambda i: P.Cancel(req_id=i, ids=[world.a_canary]))
        assert isinstance(killed, P.Cancelled) and killed.ids == [world.a_canary]
        events = next((m for m in alice.seen if isinstance(m, P.Events)), None)
        while events is None:
            m = await alice.recv()
            events = m if isinstance(m, P.Events) else None
        assert events.watch_id == world.a_watch
        assert [(e.task_id, e.to_state) for e in events.events] == [(world.a_canary, "KILLED")]


# --------------------------------------------------------------------------
# Tokens: a site token for its own site only, and never a client's


async def expect_reject(c: Cluster, hello: P.Hello) -> P.Reject:
    before = snapshot(c)
    async with raw_peer(c.url, hello) as (_peer, first):
        assert isinstance(first, P.Reject), first
        assert first.code in ("auth", "not_found"), first
    assert snapshot(c) == before
    return first


@pytest.mark.parametrize("other", ["beamline2", "bobsite", "nowhere"])
async def test_site_token_pilot_naming_another_site_is_refused(world: World, other: str) -> None:
    await expect_reject(world.c, pilot_hello(world.a_site, "intruder", site=other))


@pytest.mark.parametrize("other", ["beamline2", "bobsite", "nowhere"])
async def test_site_token_agent_of_another_site_is_refused(world: World, other: str) -> None:
    await expect_reject(world.c, agent_hello(world.a_site, site=other))


async def test_site_token_is_not_a_client(world: World) -> None:
    rej = await expect_reject(world.c, client_hello(world.a_site))
    assert rej.code == "auth"


async def test_user_pilot_on_another_users_site_is_refused(world: World) -> None:
    await expect_reject(world.c, pilot_hello(world.b_token, "intruder", site="beamline"))


# --------------------------------------------------------------------------
# A pilot token: its batch job's pilots, while the job lives


async def closing(peer: RawPeer) -> ConnectionClosed:
    """Read (and drop) frames until the controller closes the connection."""
    try:
        while True:
            await peer.recv()
    except ConnectionClosed as exc:
        return exc


async def test_pilot_token_serves_its_job_only_while_it_lives(world: World) -> None:
    c = world.c
    async with tidewater.connect(c.url, token=world.a_token) as a:
        job = await a.queue_submit("beamline2", nodes=1)
    # Alice's agent (a fake one, by hand) is handed the job and its pilot token.
    async with raw_peer(c.url, agent_hello(world.a_site2)) as (agent, welcome):
        assert isinstance(welcome, P.Welcome) and welcome.site == "beamline2"
        while not isinstance(jobs := await agent.recv(), P.Jobs):
            pass
        (ours,) = [j for j in jobs.jobs if j.job.id == job.id]
        token = ours.pilot_token
        assert token.startswith("twp_")

        async with raw_peer(c.url, pilot_hello(token, "job-pilot", batch_job=job.id)) as (
                pilot, first):
            assert isinstance(first, P.Welcome) and first.site == "beamline2"
            # Not a client, not an agent, not a pilot of another job or site.
            assert (await expect_reject(c, client_hello(token))).code == "auth"
            assert (await expect_reject(c, agent_hello(token))).code == "auth"
            await expect_reject(c, pilot_hello(token, "job-pilot-2", batch_job=world.a_job))
            await expect_reject(c, pilot_hello(token, "job-pilot-3", site="beamline"))

            # The job ends: the agent says so and hears the Ack after the commit.
            await agent.ws.send(P.encode(P.JobUpdates(seq=1, updates=[
                P.JobUpdate(job_id=job.id, state="finished", reason="test over")])))
            while (m := await agent.recv()) != P.Ack(seq=1):
                assert not isinstance(m, P.Error), m
            # Its pilot is let go at once...
            closed = await closing(pilot)
            assert closed.rcvd is not None and f"batch job {job.id} ended" in closed.rcvd.reason
    # ...and its token dies with it.
    rej = await expect_reject(c, pilot_hello(token, "job-pilot", batch_job=job.id))
    assert rej.code == "auth"
    (state,) = c.rows("SELECT state FROM batch_jobs WHERE id = ?", (job.id,))
    assert state == ("finished",)

    async def revoked() -> bool:
        return bool(c.rows("SELECT 1 FROM tokens WHERE batch_job = ? AND kind = 'pilot' "
                           "AND revoked_at IS NULL", (job.id,))) is False

    await until(revoked, timeout=5, what="the job's pilot tokens to be revoked")
