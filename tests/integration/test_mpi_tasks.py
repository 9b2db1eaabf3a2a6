"""MPI tasks through a real MPICH ``mpiexec``, run by pilots inside local batch jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import tidewater
from tidewater.proto import Resources

from .procs import RANK_REPORT, cluster, ranks_reported, write_site

pytestmark = [pytest.mark.integration, pytest.mark.mpi, pytest.mark.usefixtures("store")]

REPORT = RANK_REPORT


@pytest.mark.parametrize(("nodes", "ranks_per_node"), [(1, 2), (2, 1)])
async def test_two_rank_task_runs_through_mpiexec_and_both_ranks_report(
    mpich: Any, tmp_path: Path, nodes: int, ranks_per_node: int
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("mpi")
            await client.add_app("mpi", "sh", "sh -c {script}")
            site_dir = write_site(tmp_path / "site", name="mpi", scheduler="local", url=c.url,
                                  token=site_token, sections={
                                      "scheduler": {"state_dir": str(tmp_path / "jobs")},
                                      "site": {"launcher": "mpiexec", "cores_per_node": 2}})
            await c.start_agent(site_dir)
            job = await client.queue_submit("mpi", nodes=2, wall_time_min=10)
            t = await client.submit("sh", site="mpi", params={"script": REPORT},
                                    resources=Resources(num_nodes=nodes,
                                                        ranks_per_node=ranks_per_node))
            with anyio.fail_after(60):
                info = await t.result()
            assert info.state == "JOB_FINISHED", info
            assert ranks_reported(site_dir, info) == ["rank 0 of 2\n", "rank 1 of 2\n"]
            assert info.pilot.startswith(f"job{job.id}-")
            await client.queue_cancel(job.id)
