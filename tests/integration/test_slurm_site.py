"""The site agent on a real Slurm (slurmctld + slurmd + munged on this machine).

``scripts/services.sh start`` (run by ``scripts/test.sh``) sets the cluster
up; without it these tests skip, or fail under TIDEWATER_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import tidewater
from tidewater import Client
from tidewater.agents.site import job_name
from tidewater.controller.app import site_tag
from tidewater.proto import BatchJobInfo

from .procs import Cluster, cluster, until, write_site

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.usefixtures("store")]


async def squeue_state(scheduler_id: str) -> str:
    """Slurm's own word on a job ('' once it has left squeue)."""
    proc = await anyio.run_process(["squeue", "-h", "-j", scheduler_id, "-o", "%T"], check=False)
    return proc.stdout.decode().strip()


async def job_state(client: Client, job_id: int) -> BatchJobInfo:
    (job,) = [j for j in await client.queue(include_finished=True) if j.id == job_id]
    return job


async def slurm_site(c: Cluster, tmp: Path, client: Client, name: str,
                     sections: dict[str, dict[str, object]] | None = None) -> Path:
    _site, token = await client.add_site(name)
    await client.add_app(name, "hello", "echo hello {n} from $SLURM_JOB_ID")
    await client.add_app(name, "sh", "sh -c {script}")
    return write_site(tmp / f"site-{name}", name=name, scheduler="slurm", url=c.url,
                      token=token, sections={"job": {"wall_time_min": 5}, **(sections or {})})


async def test_agent_runs_tasks_in_a_slurm_job_and_cancel_removes_it(
    slurm: Any, tmp_path: Path
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await slurm_site(c, tmp_path, client, "slurmsite")
            await c.start_agent(site_dir)
            job = await client.queue_submit("slurmsite", nodes=1, wall_time_min=5)
            tasks = [await client.submit("hello", site="slurmsite", params={"n": i})
                     for i in range(10)]
            with anyio.fail_after(90):
                results = await client.wait(tasks)
            assert [r.state for r in results] == ["JOB_FINISHED"] * 10
            j = await job_state(client, job.id)
            assert j.state == "running" and j.pilots == 1
            assert await squeue_state(j.scheduler_id) == "RUNNING"
            # The tasks ran inside the Slurm job that the agent submitted.
            assert {r.stdout_tail for r in results} == {
                f"hello {i} from {j.scheduler_id}\n" for i in range(10)}

            await client.queue_cancel(job.id)

            async def ended() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            await until(ended, timeout=60, what="the cancelled Slurm job to end")
            assert await squeue_state(j.scheduler_id) in ("", "CANCELLED", "COMPLETING")
            assert (await job_state(client, job.id)).pilots == 0


async def test_agent_killed_mid_run_adopts_its_slurm_job(slurm: Any, tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await slurm_site(c, tmp_path, client, "adopt")
            agent = await c.start_agent(site_dir)
            job = await client.queue_submit("adopt", nodes=1, wall_time_min=5)
            slow = await client.submit("sh", site="adopt", params={"script": "sleep 2; echo ok"})

            async def running() -> bool:
                return (await slow.info()).state == "RUNNING"

            await until(running, timeout=60, what="the task to start in the Slurm job")
            agent.kill()
            sched_id = (await job_state(client, job.id)).scheduler_id
            await c.start_agent(site_dir, name="agent-2")
            assert (await slow.result()).stdout_tail == "ok\n"
            j = await job_state(client, job.id)
            assert (j.state, j.scheduler_id) == ("running", sched_id)
            ((sid, created),) = c.rows("SELECT id, created_at FROM sites WHERE name = ?",
                                      ("adopt",))
            name = job_name("adopt", job.id, site_tag(int(sid), float(created)))
            proc = await anyio.run_process(["squeue", "-h", "-n", name, "-o", "%i"])
            assert proc.stdout.decode().split() == [sched_id]  # adopted, not resubmitted
            await client.queue_cancel(job.id)

            async def ended() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            await until(ended, timeout=60, what="the adopted job to be cancelled")


@pytest.mark.slow
async def test_wall_time_requeues_the_running_task_into_a_later_job(
    slurm: Any, tmp_path: Path
) -> None:
    """Slurm's shortest wall time is a minute: the pilot ends its task before it, a new job
    (asked for by the autoscaler) runs the task again and it finishes."""
    marker = tmp_path / "first-attempt"
    script = f"if [ -e {marker} ]; then echo second attempt; else touch {marker}; sleep 600; fi"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await slurm_site(c, tmp_path, client, "walltime", sections={
                "job": {"wall_time_min": 1},
                "site": {"wall_time_margin": 10.0},
                "autoscale": {"enabled": True, "max_queued_jobs": 1, "max_total_nodes": 1},
            })
            await c.start_agent(site_dir)
            t = await client.submit("sh", site="walltime", params={"script": script})
            with anyio.fail_after(150):
                info = await t.result()
            assert info.state == "JOB_FINISHED" and info.stdout_tail == "second attempt\n"
            assert info.retries == 1
            jobs = await client.queue(include_finished=True)
            assert len(jobs) >= 2
            states = [r[0] for r in c.rows(
                "SELECT to_state FROM events WHERE task_id = ? ORDER BY id", (t.id,))]
            assert "RUN_TIMEOUT" in states and states[-1] == "JOB_FINISHED"
            for j in jobs:
                if j.state != "finished":
                    await client.queue_cancel(j.id)
