"""Batch jobs, site agents and pilot tokens through the controller's driver and fake peers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tidewater import proto as P
from tidewater.config import ControllerConfig
from tidewater.controller.service import ControllerService
from tidewater.controller.users import add_user
from tidewater.errors import InvalidRequest, NotFound

from .test_service import WELCOME, FakePeer

LIMITS = P.SiteLimits(cores_per_node=4, gpus_per_node=2, max_nodes_per_job=2,
                      max_wall_time_min=60, queues=["debug"], scheduler="slurm")


@pytest.fixture
async def env(tmp_path: Path) -> Any:
    db = str(tmp_path / "jobs.db")
    token = await add_user(db, "alice")
    bob_token = await add_user(db, "bob")
    c = ControllerService(ControllerConfig(db=db))
    async with anyio.create_task_group() as tg:
        await tg.start(c.run)
        who = await c.authenticate(token)
        bob = await c.authenticate(bob_token)
        client = FakePeer(1)
        c.connected(who, client)
        await c.on_client(who, client, P.AddSite(req_id=1, name="hpc"))
        site_token = (await client.next(P.SiteAdded)).token
        await c.on_client(who, client, P.AddApp(req_id=2, site="hpc", name="t", command="/bin/true"))
        await client.next(P.AppAdded)
        yield c, who, bob, client, site_token
        tg.cancel_scope.cancel()


async def settled(c: ControllerService) -> None:
    """Every write queued so far is committed and its effects sent (writes commit in order)."""
    with anyio.fail_after(5):
        await c.store.commit([])
    dispatch(c)


def dispatch(c: ControllerService) -> None:
    c._execute(c.state.dispatch(time.time()))


async def connect_agent(c: ControllerService, site_token: str, limits: P.SiteLimits | None = LIMITS
                        ) -> tuple[FakePeer, P.Jobs]:
    agent = FakePeer(50)
    hello = P.Hello(role="agent", proto_version=1, token=site_token, site="hpc", limits=limits)
    who = await c.authenticate(site_token)
    c.connected(who, agent)
    await c.on_agent_hello(who, agent, hello, WELCOME)
    return agent, await agent.next(P.Jobs)


async def test_job_goes_to_agent_with_a_pilot_token_that_dies_with_the_job(env: Any) -> None:
    c, who, _bob, client, site_token = env
    agent, jobs = await connect_agent(c, site_token)
    assert jobs.jobs == []
    await c.on_client(who, client, P.AddJob(req_id=3, job=P.JobSpec(
        site="hpc", nodes=1, wall_time_min=10, queue="debug")))
    job = (await client.next(P.JobAdded)).job
    assert job.state == "pending_submission"
    start = await agent.next(P.StartJob)
    assert start.job.job.id == job.id and start.job.pilot_token.startswith("twp_")
    token = start.job.pilot_token

    pilot_who = await c.authenticate(token)
    assert pilot_who.batch_job == job.id and pilot_who.user == "alice"

    site_id = c.state.jobs.jobs[job.id].site_id
    await c.on_agent(site_id, agent, P.JobUpdates(seq=1, updates=[P.JobUpdate(
        job_id=job.id, state="queued", scheduler_id="77")]))
    assert (await agent.next(P.Ack)).seq == 1
    pilot = FakePeer(60)
    c.connected(pilot_who, pilot)
    c.on_pilot_hello(pilot_who, pilot, P.Hello(role="pilot", proto_version=1, token=token,
                                               pilot_id="pj", cores=4, credit_cores=4,
                                               batch_job=job.id), WELCOME)
    await c.on_client(who, client, P.Submit(req_id=4, tasks=[P.TaskSpec(app="t", site="hpc")]))
    (tid,) = (await client.next(P.Submitted)).ids
    a = (await pilot.next(P.RunTasks)).tasks[0]
    await c.on_pilot(c.state.pilots.pilots["pj"], P.Reports(seq=1, reports=[
        P.Report(task_id=tid, attempt=a.attempt, kind="started", time=1.0)]))
    await pilot.next(P.Ack)

    await c.on_agent(site_id, agent, P.JobUpdates(seq=2, updates=[
        P.JobUpdate(job_id=job.id, state="finished", reason="TIMEOUT")]))
    await agent.next(P.Ack)
    # The job is over: its token is refused and its running task is requeued at once.
    with pytest.raises(InvalidRequest):
        await c.authenticate(token)
    assert pilot.closed is not None
    await settled(c)
    assert c.state.tasks.live[tid].state.value == "RESTART_READY"
    await c.on_client(who, client, P.ListJobs(req_id=5, include_finished=True))
    (listed,) = (await client.next(P.JobList)).jobs
    assert (listed.state, listed.reason, listed.scheduler_id) == ("finished", "TIMEOUT", "77")


async def test_jobs_wait_for_the_agent_and_survive_a_controller_restart(
    env: Any, tmp_path: Path
) -> None:
    c, who, _bob, client, site_token = env
    await c.on_client(who, client, P.AddJob(req_id=3, job=P.JobSpec(site="hpc", nodes=2)))
    job = (await client.next(P.JobAdded)).job
    # No agent yet: it hears of the job when it connects, with a working token.
    agent, jobs = await connect_agent(c, site_token)
    (aj,) = jobs.jobs
    assert aj.job.id == job.id and aj.pilot_token
    who_p = await c.authenticate(aj.pilot_token)
    assert who_p.batch_job == job.id

    c2 = ControllerService(ControllerConfig(db=c.config.db))
    async with anyio.create_task_group() as tg:
        await tg.start(c2.run)
        assert c2.state.jobs.jobs[job.id].state == "pending_submission"
        assert c2.state.jobs.limits  # the agent's limits were stored
        who_p2 = await c2.authenticate(aj.pilot_token)
        assert who_p2.batch_job == job.id
        tg.cancel_scope.cancel()


async def test_cancel_asks_the_agent_and_refuses_others_and_ended_jobs(env: Any) -> None:
    c, who, bob, client, site_token = env
    agent, _ = await connect_agent(c, site_token)
    await c.on_client(who, client, P.AddJob(req_id=3, job=P.JobSpec(site="hpc")))
    job = (await client.next(P.JobAdded)).job
    other = FakePeer(9)
    c.connected(bob, other)
    with pytest.raises(NotFound):
        await c.on_client(bob, other, P.CancelJob(req_id=1, id=job.id))
    await c.on_client(bob, other, P.ListJobs(req_id=2))
    assert (await other.next(P.JobList)).jobs == []
    await c.on_client(who, client, P.CancelJob(req_id=4, id=job.id))
    await client.next(P.Done)
    stop = await agent.next(P.StopJob)
    assert stop.job_id == job.id
    assert c.state.jobs.jobs[job.id].state == "pending_deletion"
    site_id = c.state.jobs.jobs[job.id].site_id
    await c.on_agent(site_id, agent, P.JobUpdates(seq=1, updates=[
        P.JobUpdate(job_id=job.id, state="finished", reason="cancelled before it was submitted")]))
    await agent.next(P.Ack)
    with pytest.raises(InvalidRequest, match="already ended"):
        await c.on_client(who, client, P.CancelJob(req_id=5, id=job.id))


async def test_site_limits_refuse_impossible_tasks_and_jobs_at_submit(env: Any) -> None:
    c, who, _bob, client, site_token = env
    await connect_agent(c, site_token)
    with pytest.raises(InvalidRequest, match="4 GPUs per node; nodes of site 'hpc' have 2"):
        await c.on_client(who, client, P.Submit(req_id=3, tasks=[P.TaskSpec(
            app="t", site="hpc", resources=P.Resources(gpus=4))]))
    with pytest.raises(InvalidRequest, match="8 cores per node"):
        await c.on_client(who, client, P.Submit(req_id=4, tasks=[P.TaskSpec(
            app="t", site="hpc", resources=P.Resources(ranks_per_node=4, threads_per_rank=2))]))
    with pytest.raises(InvalidRequest, match="needs 3 nodes"):
        await c.on_client(who, client, P.Submit(req_id=5, tasks=[P.TaskSpec(
            app="t", site="hpc", resources=P.Resources(num_nodes=3))]))
    with pytest.raises(InvalidRequest, match="longer than the 60 min batch jobs"):
        await c.on_client(who, client, P.Submit(req_id=8, tasks=[P.TaskSpec(
            app="t", site="hpc", wall_time=2 * 3600)]))
    with pytest.raises(InvalidRequest, match="queue 'regular' is not allowed"):
        await c.on_client(who, client, P.AddJob(req_id=6, job=P.JobSpec(
            site="hpc", queue="regular")))
    with pytest.raises(InvalidRequest, match="at most 60 min"):
        await c.on_client(who, client, P.AddJob(req_id=7, job=P.JobSpec(
            site="hpc", wall_time_min=90)))
    assert c.state.jobs.jobs == {} and c.state.tasks.live == {}


async def test_agent_hears_demand_and_its_job_requests_are_idempotent(env: Any) -> None:
    c, who, _bob, client, site_token = env
    agent, _ = await connect_agent(c, site_token)
    await c.on_client(who, client, P.Submit(req_id=3, tasks=[
        P.TaskSpec(app="t", site="hpc", resources=P.Resources(cores=2))] * 3))
    await client.next(P.Submitted)
    while True:
        d = await agent.next(P.Demand)
        if d.tasks == 3:
            break
    assert d.cores == 6 and d.idle_nodes == 0
    site_id = next(iter(c.state.jobs.agents))
    req = P.RequestJob(key="k1", job=P.JobSpec(site="hpc", nodes=2, wall_time_min=5))
    await c.on_agent(site_id, agent, req)
    start = await agent.next(P.StartJob)
    assert start.job.job.autoscaled and start.job.job.nodes == 2
    await c.on_agent(site_id, agent, req)  # a resend after a reconnect
    assert len(c.state.jobs.jobs) == 1


async def test_multi_node_task_runs_on_the_first_of_two_reserved_pilots(env: Any) -> None:
    c, who, _bob, client, site_token = env
    agent, _ = await connect_agent(c, site_token)
    await c.on_client(who, client, P.AddJob(req_id=3, job=P.JobSpec(site="hpc", nodes=2)))
    token = (await agent.next(P.StartJob)).job.pilot_token
    pw = await c.authenticate(token)
    peers = {}
    for name in ("n1", "n2"):
        peers[name] = FakePeer(70 + len(peers))
        c.connected(pw, peers[name])
        c.on_pilot_hello(pw, peers[name], P.Hello(
            role="pilot", proto_version=1, token=token, pilot_id=f"p-{name}", hostname=name,
            cores=4, credit_cores=5), WELCOME)
    await c.on_client(who, client, P.Submit(req_id=4, tasks=[P.TaskSpec(
        app="t", site="hpc", resources=P.Resources(num_nodes=2, ranks_per_node=2))]))
    await client.next(P.Submitted)
    a = (await peers["n1"].next(P.RunTasks)).tasks[0]
    assert a.hosts == ["n1", "n2"] and a.ranks_per_node == 2 and a.num_nodes == 2
    assert a.cores == 4
    # The second node is reserved: a small task waits rather than landing on it.
    await c.on_client(who, client, P.Submit(req_id=5, tasks=[P.TaskSpec(app="t", site="hpc")]))
    (small,) = (await client.next(P.Submitted)).ids
    dispatch(c)
    assert not any(isinstance(m, P.RunTasks) for m in peers["n2"].sent)
    await c.on_pilot(c.state.pilots.pilots["p-n1"], P.Reports(seq=1, reports=[
        P.Report(task_id=a.task_id, attempt=a.attempt, kind="started", time=1.0),
        P.Report(task_id=a.task_id, attempt=a.attempt, kind="done", time=2.0, exit_code=0)]))
    await peers["n1"].next(P.Ack)
    await settled(c)
    got = [t.task_id for peer in peers.values() for m in peer.sent
           if isinstance(m, P.RunTasks) for t in m.tasks]
    assert small in got  # the reserved node is free again


async def test_a_running_job_whose_pilots_never_came_is_flagged(env: Any) -> None:
    c, who, _bob, client, site_token = env
    agent, _ = await connect_agent(c, site_token)
    await c.on_client(who, client, P.AddJob(req_id=3, job=P.JobSpec(site="hpc")))
    job = (await client.next(P.JobAdded)).job
    site_id = c.state.jobs.jobs[job.id].site_id
    await c.on_agent(site_id, agent, P.JobUpdates(seq=1, updates=[P.JobUpdate(
        job_id=job.id, state="running", scheduler_id="5", start_time=1000.0)]))
    await agent.next(P.Ack)
    info = c.state.jobs.info(c.state.jobs.jobs[job.id], "hpc", 1000.0 + 600)
    assert "no pilot has connected" in info.flagged
    assert c.state.jobs.info(c.state.jobs.jobs[job.id], "hpc", 1000.0 + 10).flagged == ""
