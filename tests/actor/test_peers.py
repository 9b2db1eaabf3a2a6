"""A pilot and a site agent built in this process, against a real controller on loopback.

The integration tests run pilots and agents as subprocesses; these build
:class:`Pilot` and :class:`Agent` directly, so their state can be read while
they work, and a failure points at a line instead of a log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater.agents.settings import load
from tidewater.agents.site import Agent
from tidewater.config import ControllerConfig, Timeouts
from tidewater.controller.app import Server, serve
from tidewater.controller.users import add_user
from tidewater.pilot.main import Pilot, PilotConfig

from ..integration.procs import HEARTBEAT, LEASE, cancel_site_jobs, free_port, until, write_site

TIMEOUTS = Timeouts(heartbeat_interval=HEARTBEAT, lease_timeout=LEASE)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[tuple[Server, str]]:
    db = str(tmp_path / "tw.db")
    token = await add_user(db, "alice")
    async with serve(ControllerConfig(db=db, port=0, timeouts=TIMEOUTS)) as server:
        yield server, token


async def test_a_pilot_in_process_runs_a_task_and_the_result_comes_back(
    controller: tuple[Server, str], tmp_path: Path,
) -> None:
    server, token = controller
    async with tidewater.connect(server.url, token=token) as client:
        _site, site_token = await client.add_site("laptop")
        await client.add_app("laptop", "greet", "echo hello {name}")
        await client.add_app("laptop", "nap", "sleep {s}")
        pilot = Pilot(PilotConfig(url=server.url, token=site_token, cores=1, prefetch=0,
                                  workdir=str(tmp_path / "work"), pilot_id="inproc",
                                  timeouts=TIMEOUTS))
        async with anyio.create_task_group() as tg:
            await tg.start(pilot.run)
            task = await client.submit("greet", site="laptop", params={"name": "world"})
            info = await task.result(timeout=30)
            assert (info.state, info.exit_code, info.stdout_tail) == (
                "JOB_FINISHED", 0, "hello world\n")
            assert info.pilot == "inproc"

            # A cancelled running task is killed here and nothing of it is left held.
            nap = await client.submit("nap", site="laptop", params={"s": "60"})

            async def running() -> bool:
                return (await nap.info()).state == "RUNNING"

            await until(running, what="the nap to run")
            assert await nap.cancel()
            killed = await nap.result(timeout=30)
            assert killed.state == "KILLED"

            async def nothing_held() -> bool:
                return not pilot.running and pilot.held() == []

            await until(nothing_held, what="the pilot to let the killed task go")
            with anyio.fail_after(30):
                await pilot.stop()
        assert not pilot.book.owes  # every report was acknowledged before Bye


async def test_a_pilot_in_process_comes_back_after_the_controller_restarts(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "tw.db")
    token = await add_user(db, "alice")
    config = ControllerConfig(db=db, port=free_port(), timeouts=TIMEOUTS)
    async with anyio.create_task_group() as tg:
        async with serve(config) as server, tidewater.connect(server.url, token=token) as client:
            _site, site_token = await client.add_site("laptop")
            await client.add_app("laptop", "greet", "echo hello {name}")
            pilot = Pilot(PilotConfig(url=server.url, token=site_token, cores=1,
                                      workdir=str(tmp_path / "work"), pilot_id="inproc",
                                      timeouts=TIMEOUTS))
            await tg.start(pilot.run)
            first = await client.submit("greet", site="laptop", params={"name": "before"})
            assert (await first.result(timeout=30)).stdout_tail == "hello before\n"
        # The controller is gone; the pilot backs off and keeps trying.

        async with serve(config) as server, tidewater.connect(server.url, token=token) as client:
            again = await client.submit("greet", site="laptop", params={"name": "after"})
            info = await again.result(timeout=30)
            assert (info.state, info.stdout_tail, info.pilot) == (
                "JOB_FINISHED", "hello after\n", "inproc")
            with anyio.fail_after(30):
                await pilot.stop()


async def test_an_agent_in_process_submits_a_batch_job_whose_pilot_runs_a_task(
    controller: tuple[Server, str], tmp_path: Path,
) -> None:
    server, token = controller
    async with tidewater.connect(server.url, token=token) as client:
        _site, site_token = await client.add_site("hpc")
        await client.add_app("hpc", "greet", "echo hello {name}")
        site_dir = write_site(tmp_path / "site", name="hpc", scheduler="local", url=server.url,
                              token=site_token,
                              sections={"scheduler": {"state_dir": str(tmp_path / "jobs")}})
        agent = Agent(load(site_dir), timeouts=TIMEOUTS)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                job = await client.queue_submit("hpc", nodes=1, wall_time_min=10)
                task = await client.submit("greet", site="hpc", params={"name": "batch"})
                info = await task.result(timeout=60)
                assert (info.state, info.stdout_tail) == ("JOB_FINISHED", "hello batch\n")
                assert info.pilot.startswith(f"job{job.id}")
                tracked = agent.jobs[job.id]
                assert tracked.scheduler_id

                # The job's pilot ran the task, but the agent learns that the job
                # runs from its next look at the scheduler.
                async def running() -> bool:
                    return tracked.state == "running"

                await until(running, what="the agent to see its batch job running")

                await client.queue_cancel(job.id)

                async def finished() -> bool:
                    (j,) = [j for j in await client.queue(include_finished=True)
                            if j.id == job.id]
                    return j.state == "finished"

                await until(finished, what="the cancelled batch job to finish")
                assert agent.jobs[job.id].state == "finished"
                tg.cancel_scope.cancel()
        finally:
            await cancel_site_jobs(site_dir)
