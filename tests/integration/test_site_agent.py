"""The site agent on the local fork scheduler: real controller, agent, batch jobs and pilots.

Every process is real (controller, `tidewater site start`, localexec batch
jobs, pilots inside them) and talks over loopback sockets. The same agent
path on real Slurm is in ``test_slurm_site.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import tidewater
from tidewater import Client
from tidewater.agents.site import job_name
from tidewater.controller.app import site_tag
from tidewater.proto import BatchJobInfo

from .procs import PY, Cluster, cluster, until, write_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


def local_jobs(state_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [PY, "-m", "tidewater.agents.schedulers.localexec", "status", "--state-dir",
         str(state_dir)], capture_output=True, text=True, check=True,
    ).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()]


async def job_state(client: Client, job_id: int) -> BatchJobInfo:
    (job,) = [j for j in await client.queue(include_finished=True) if j.id == job_id]
    return job


async def setup_site(c: Cluster, tmp: Path, client: Client, *, name: str = "laptop",
                     sections: dict[str, dict[str, object]] | None = None) -> Path:
    _site, token = await client.add_site(name)
    await client.add_app(name, "hello", "echo hello {n}")
    await client.add_app(name, "sh", "sh -c {script}")
    secs: dict[str, dict[str, object]] = {"scheduler": {"state_dir": str(tmp / "local-jobs")}}
    for k, v in (sections or {}).items():
        secs.setdefault(k, {}).update(v)
    return write_site(tmp / f"site-{name}", name=name, scheduler="local", url=c.url,
                      token=token, sections=secs)


async def test_batch_job_starts_pilots_that_run_tasks_and_cancel_ends_it(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client)
            await c.start_agent(site_dir)
            job = await client.queue_submit("laptop", nodes=2, wall_time_min=10)
            assert job.state == "pending_submission"
            tasks = [await client.submit("hello", site="laptop", params={"n": i})
                     for i in range(20)]
            results = await client.wait(tasks)
            assert [r.state for r in results] == ["JOB_FINISHED"] * 20
            assert {r.stdout_tail for r in results} == {f"hello {i}\n" for i in range(20)}
            # They ran in the batch job, whose two node pilots both connect
            # (the first may have run all 20 before the second arrived).
            assert {r.pilot.split("-")[0] for r in results} == {f"job{job.id}"}

            async def both_pilots() -> bool:
                return (await job_state(client, job.id)).pilots == 2

            await until(both_pilots, what="both node pilots of the job")
            running = await job_state(client, job.id)
            assert running.state == "running" and running.scheduler_id
            (listed,) = local_jobs(tmp_path / "local-jobs")
            assert listed["name"].startswith(f"tw-laptop-{job.id}-") and listed["state"] == "RUNNING"

            await client.queue_cancel(job.id)

            async def gone() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            await until(gone, what="the cancelled job to finish")
            (listed,) = local_jobs(tmp_path / "local-jobs")
            assert listed["state"] == "CANCELLED"
            assert (await job_state(client, job.id)).pilots == 0
            with pytest.raises(tidewater.InvalidRequest, match="already ended"):
                await client.queue_cancel(job.id)


async def test_autoscaler_serves_an_idle_site_then_lets_it_drain(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client, sections={
                "site": {"pilot_idle_timeout": 1.0},
                "autoscale": {"enabled": True, "max_queued_jobs": 1, "max_total_nodes": 1},
            })
            await c.start_agent(site_dir)
            assert await client.queue() == []
            tasks = [await client.submit("hello", site="laptop", params={"n": i})
                     for i in range(5)]
            results = await client.wait(tasks)
            assert [r.state for r in results] == ["JOB_FINISHED"] * 5
            (job,) = await client.queue(include_finished=True)
            assert job.autoscaled

            async def drained() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            # Nothing left to do: the idle pilot exits, its job ends, nothing new is asked for.
            await until(drained, what="the idle job to end")
            assert len(await client.queue(include_finished=True)) == 1
            assert local_jobs(tmp_path / "local-jobs")[0]["state"] == "COMPLETED"


async def test_agent_restart_adopts_its_jobs(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client)
            agent = await c.start_agent(site_dir)
            job = await client.queue_submit("laptop", nodes=1, wall_time_min=10)

            async def running() -> bool:
                j = await job_state(client, job.id)
                return j.state == "running" and j.pilots == 1

            await until(running, what="the job's pilot")
            sched_id = (await job_state(client, job.id)).scheduler_id
            agent.kill()
            # The pilots do not depend on the agent: work goes on without it.
            t = await client.submit("hello", site="laptop", params={"n": 1})
            assert (await t.result()).state == "JOB_FINISHED"
            await c.start_agent(site_dir, name="agent-2")
            await c.pilots["agent-2"].wait_for("connected to")
            # Adopted, not resubmitted, and still under its control.
            assert len(local_jobs(tmp_path / "local-jobs")) == 1
            j = await job_state(client, job.id)
            assert (j.state, j.scheduler_id) == ("running", sched_id)
            await client.queue_cancel(job.id)

            async def cancelled() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            await until(cancelled, what="the adopted job to be cancelled")
            assert local_jobs(tmp_path / "local-jobs")[0]["state"] == "CANCELLED"


async def test_job_submitted_just_before_an_agent_crash_is_adopted_by_name(
    tmp_path: Path
) -> None:
    """The scheduler has the job but the controller never heard its id: no second job."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client)
            job = await client.queue_submit("laptop", nodes=1, wall_time_min=10)
            # What the crashed agent had done: the script submitted under the job's name.
            script = tmp_path / "orphan.sh"
            ((sid, created),) = c.rows("SELECT id, created_at FROM sites WHERE name = ?",
                                      ("laptop",))
            name = job_name("laptop", job.id, site_tag(int(sid), float(created)))
            script.write_text(f"#!/bin/bash\n#TWLOCAL --job-name={name}\n"
                              "#TWLOCAL --nodes=1\n#TWLOCAL --time=10\nsleep 60\n")
            proc = await anyio.run_process(
                [PY, "-m", "tidewater.agents.schedulers.localexec", "submit", "--state-dir",
                 str(tmp_path / "local-jobs"), str(script)])
            orphan_id = proc.stdout.decode().split()[-1]
            await c.start_agent(site_dir)

            async def adopted() -> bool:
                return (await job_state(client, job.id)).scheduler_id == orphan_id

            await until(adopted, what="adoption of the orphaned job")
            assert len(local_jobs(tmp_path / "local-jobs")) == 1
            await client.queue_cancel(job.id)


async def test_wall_time_end_requeues_the_running_task_into_a_later_job(
    tmp_path: Path
) -> None:
    """A one-"minute" job (4 s here) ends under a running task: a later job finishes it."""
    marker = tmp_path / "first-attempt"
    script = f"if [ -e {marker} ]; then echo second attempt; else touch {marker}; sleep 60; fi"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client, sections={
                "scheduler": {"minute_seconds": 4.0},
                "job": {"wall_time_min": 1},
                "autoscale": {"enabled": True, "max_queued_jobs": 1, "max_total_nodes": 1},
            })
            await c.start_agent(site_dir)
            t = await client.submit("sh", site="laptop", params={"script": script})
            with anyio.fail_after(60):
                info = await t.result()
            assert info.state == "JOB_FINISHED" and info.stdout_tail == "second attempt\n"
            assert info.retries == 1
            jobs = await client.queue(include_finished=True)
            assert len(jobs) >= 2 and info.pilot.startswith(f"job{jobs[-1].id}-")
            states = [r[0] for r in c.rows(
                "SELECT to_state FROM events WHERE task_id = ? ORDER BY id", (t.id,))]
            assert "RUN_TIMEOUT" in states and states[-1] == "JOB_FINISHED"


@pytest.mark.chaos
async def test_controller_killed_mid_run_keeps_its_batch_jobs(tmp_path: Path) -> None:
    """kill -9 of the controller: agent and pilots reconnect, the job and its token live on."""
    async with cluster(tmp_path) as c:
        ctl = await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client)
            agent = await c.start_agent(site_dir)
            job = await client.queue_submit("laptop", nodes=1, wall_time_min=10)
            slow = [await client.submit("sh", site="laptop", params={"script": f"sleep 1; echo {i}"})
                    for i in range(3)]

            async def running() -> bool:
                return (await slow[0].info()).state == "RUNNING"

            await until(running, what="the first task to run in the batch job")
            sched_id = (await job_state(client, job.id)).scheduler_id
            ctl.kill()
            await ctl.proc.wait()
            await c.start_controller()
            await agent.wait_for("agent of laptop connected", count=2)
            # Everything acknowledged before the crash finishes, and new work runs too.
            more = await client.submit("hello", site="laptop", params={"n": "after"})
            results = await client.wait([*slow, more])
            assert [r.state for r in results] == ["JOB_FINISHED"] * 4
            assert [r.stdout_tail for r in results] == ["0\n", "1\n", "2\n", "hello after\n"]
            j = await job_state(client, job.id)
            assert (j.state, j.scheduler_id, j.pilots) == ("running", sched_id, 1)
            assert len(local_jobs(tmp_path / "local-jobs")) == 1
