"""The whole agent path on PBS, LSF and Cobalt, through fake qsub/qstat/bsub/bjobs/qdel/bkill.

The fakes (``tests/fakes``) parse the directives the adapters write, really run
the batch script with the scheduler's own environment (``PBS_NODEFILE``,
``LSB_MCPU_HOSTS``, ``COBALT_PARTNAME``...) and print what the real tools
print. PBS runs one pilot per node (node mode, ``mpiexec -ppn 1``); LSF and
Cobalt run one head pilot (head mode, as on Summit and Theta) that launches
every task through the MPI launcher: MPICH's ``mpiexec`` for LSF, a fake
``aprun`` that starts the ranks here for Cobalt (its nodes are ``nid…``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import Client
from tidewater.proto import BatchJobInfo, Resources

from .procs import RANK_REPORT, cluster, ranks_reported, until, write_site

pytestmark = [pytest.mark.integration, pytest.mark.mpi, pytest.mark.usefixtures("store")]

FAKES = Path(__file__).resolve().parent.parent / "fakes"


def fake_env(kind: str, root: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(FAKES / kind), str(Path(sys.executable).parent),
                            os.environ["PATH"]])
    return {"PATH": path, "TIDEWATER_FAKE_SCHED_DIR": str(root),
            "TIDEWATER_FAKE_SCHED_GRACE": "1", **extra}


async def job_state(client: Client, job_id: int) -> BatchJobInfo:
    (job,) = [j for j in await client.queue(include_finished=True) if j.id == job_id]
    return job


@pytest.mark.parametrize(("kind", "mode", "launcher"), [
    ("pbs", "node", "mpiexec"), ("lsf", "head", "mpiexec"), ("cobalt", "head", "aprun")])
async def test_agent_runs_tasks_through_a_fake_scheduler(
    mpich: object, tmp_path: Path, kind: str, mode: str, launcher: str
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site(kind)
            await client.add_app(kind, "hello", "echo hello {n}")
            await client.add_app(kind, "sh", "sh -c {script}")
            site_dir = write_site(tmp_path / "site", name=kind, scheduler=kind, url=c.url,
                                  token=site_token, sections={
                                      "site": {"mode": mode, "launcher": launcher,
                                               "cores_per_node": 2}})
            env = fake_env(kind, tmp_path / "sched")
            await c.start_agent(site_dir, env=env)
            job = await client.queue_submit(kind, nodes=1, wall_time_min=10)
            tasks = [await client.submit("hello", site=kind, params={"n": i}) for i in range(5)]
            mpi = await client.submit("sh", site=kind,
                                      params={"script": RANK_REPORT},
                                      resources=Resources(ranks_per_node=2))
            with anyio.fail_after(60):
                results = await client.wait([*tasks, mpi])
            assert [r.state for r in results] == ["JOB_FINISHED"] * 6, results
            assert {r.stdout_tail for r in results[:5]} == {f"hello {i}\n" for i in range(5)}
            assert ranks_reported(site_dir, results[5]) == ["rank 0 of 2\n", "rank 1 of 2\n"]
            j = await job_state(client, job.id)
            assert j.state == "running" and j.scheduler_id and j.pilots == 1
            assert {r.pilot.split("-")[0] for r in results} == {f"job{job.id}"}

            await client.queue_cancel(job.id)

            async def ended() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            await until(ended, what=f"the cancelled {kind} job to end")


async def test_autoscaler_facing_a_scheduler_that_rejects_everything_cannot_run_away(
    tmp_path: Path
) -> None:
    """Every qsub fails: the agent says why on `queue ls`, and backs off instead of retrying."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("pbs")
            await client.add_app("pbs", "hello", "echo hello")
            site_dir = write_site(tmp_path / "site", name="pbs", scheduler="pbs", url=c.url,
                                  token=site_token, sections={
                                      "autoscale": {"enabled": True, "retry_after": 2.0,
                                                    "max_queued_jobs": 3}})
            env = fake_env("pbs", tmp_path / "sched", TIDEWATER_FAKE_SCHED_REJECT="1")
            await c.start_agent(site_dir, env=env)
            await client.submit("hello", site="pbs")

            async def refused_twice() -> bool:
                jobs = await client.queue(include_finished=True)
                return len([j for j in jobs if j.state == "submit_failed"]) >= 2

            await until(refused_twice, what="two refused submissions")
            t0 = anyio.current_time()
            jobs = await client.queue(include_finished=True)
            assert all(j.state == "submit_failed" for j in jobs)
            assert "qsub" in jobs[0].error and "exited" in jobs[0].error
            # 2 s, then 4 s, 8 s...: a few attempts in the first seconds, not hundreds.
            assert len(jobs) <= 3
            await until(lambda: _count_at_least(client, 3), timeout=30,
                        what="a third attempt after the backoff")
            assert anyio.current_time() - t0 >= 2.0
            assert len(await client.queue(include_finished=True)) <= 4


async def _count_at_least(client: Client, n: int) -> bool:
    return len(await client.queue(include_finished=True)) >= n
