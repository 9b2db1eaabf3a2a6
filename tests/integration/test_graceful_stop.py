"""SIGTERM to a pilot and to a site agent: the graceful shutdown contract, on real processes.

A pilot told to stop takes no more work, hands back what has not started at
once (tests/unit/test_pilot_book.py), lets running tasks finish for ``--drain-timeout`` seconds, then kills and
hands back what still runs (retried at once elsewhere, not after a lease),
says Bye and exits 0; a second signal skips the wait. A site agent told to
stop leaves its batch jobs running and exits 0; started again, it adopts them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import Client, Task

from .procs import Proc, cluster, until
from .test_site_agent import job_state, local_jobs, setup_site

pytestmark = pytest.mark.integration

DRAIN = 4.0
"""The stopping pilot's --drain-timeout in these tests (seconds)."""
EXIT_SLACK = 10.0
"""How much longer than its drain timeout a stopping pilot may take to exit."""


async def on_pilot(client: Client, task: Task, pilot: str, states: tuple[str, ...]) -> bool:
    info = await task.info()
    return info.pilot == pilot and info.state in states


async def exit_status(p: Proc, within: float) -> int:
    with anyio.fail_after(within):
        return await p.proc.wait()


async def test_stopped_pilot_finishes_short_tasks_and_hands_back_the_rest(tmp_path: Path) -> None:
    flag = tmp_path / "let-the-short-task-end"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            # Ends when the test says so (after the SIGTERM, inside the drain timeout).
            await client.add_app("hpc", "short",
                                 "while [ ! -e {flag} ]; do sleep 0.05; done; echo short")
            # The first attempt would run for a minute; later ones finish at once.
            await client.add_app("hpc", "slow_once",
                                 '[ "$TIDEWATER_ATTEMPT" -gt 1 ] || sleep 60; echo ok')
            await client.add_app("hpc", "quick", "echo quick")
            first = await c.start_pilot(site_token, pilot_id="first", cores=2,
                                        drain_timeout=DRAIN)
            short = await client.submit("short", site="hpc", params={"flag": str(flag)})
            slow = await client.submit("slow_once", site="hpc")

            async def placed() -> bool:
                return (await on_pilot(client, short, "first", ("RUNNING",))
                        and await on_pilot(client, slow, "first", ("RUNNING",)))

            await until(placed, what="two tasks running on the first pilot")
            await c.start_pilot(site_token, pilot_id="second", cores=1)
            stopped_at = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            await first.wait_for("stopping: letting 2 running tasks finish")
            # Work submitted now goes to the other pilot: the stopping one takes no more.
            quick = await client.submit("quick", site="hpc")
            q = await quick.result(timeout=EXIT_SLACK)
            assert first.proc.returncode is None
            assert (q.state, q.pilot) == ("JOB_FINISHED", "second")
            # A running task that ends within the drain timeout is reported by the stopping
            # pilot, as its first and only attempt.
            await anyio.Path(flag).touch()
            s = await short.result(timeout=DRAIN)
            assert (s.state, s.pilot, s.attempt, s.stdout_tail) == (
                "JOB_FINISHED", "first", 1, "short\n")
            # The long one is handed back at the bound; the pilot says Bye and exits 0.
            assert await exit_status(first, DRAIN + EXIT_SLACK) == 0
            waited = time.monotonic() - stopped_at
            assert DRAIN * 0.9 <= waited <= DRAIN + EXIT_SLACK
            info = await slow.result(timeout=30)
    assert (info.state, info.attempt, info.pilot, info.stdout_tail) == (
        "JOB_FINISHED", 2, "second", "ok\n")
    reasons = c.rows("SELECT data FROM events WHERE task_id = ? AND to_state = 'RUN_TIMEOUT'",
                     (slow.id,))
    assert len(reasons) == 1 and "the pilot was stopped" in str(reasons[0][0])


async def test_a_second_signal_skips_the_drain(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "slow_once",
                                 '[ "$TIDEWATER_ATTEMPT" -gt 1 ] || sleep 60; echo ok')
            first = await c.start_pilot(site_token, pilot_id="first", drain_timeout=300)
            async with client.watch(states=["RUNNING"]) as running:
                task = await client.submit("slow_once", site="hpc")
                await running.__anext__()
            first.proc.send_signal(signal.SIGTERM)
            await first.wait_for("stopping: letting 1 running tasks finish")
            first.proc.send_signal(signal.SIGINT)
            assert await exit_status(first, EXIT_SLACK) == 0
            await c.start_pilot(site_token, pilot_id="second")
            info = await task.result(timeout=30)
    assert (info.state, info.attempt, info.pilot) == ("JOB_FINISHED", 2, "second")


async def test_stopped_agent_leaves_its_jobs_running_and_adopts_them_again(
    tmp_path: Path
) -> None:
    flag = tmp_path / "let-the-task-end"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            site_dir = await setup_site(c, tmp_path, client)
            agent = await c.start_agent(site_dir)
            job = await client.queue_submit("laptop", nodes=1, wall_time_min=10)
            task = await client.submit(
                "sh", site="laptop",
                params={"script": f"while [ ! -e {flag} ]; do sleep 0.05; done; echo done"})

            async def running() -> bool:
                return (await task.info()).state == "RUNNING"

            await until(running, what="the task running in the batch job")
            sched_id = (await job_state(client, job.id)).scheduler_id
            assert sched_id
            agent.proc.send_signal(signal.SIGTERM)
            assert await exit_status(agent, EXIT_SLACK) == 0
            await agent.wait_for("batch jobs are left running")
            # The job and its pilot go on without the agent: the running task finishes,
            # and new work runs too.
            await anyio.Path(flag).touch()
            info = await task.result(timeout=30)
            assert (info.state, info.attempt, info.stdout_tail) == ("JOB_FINISHED", 1, "done\n")
            assert info.pilot.startswith(f"job{job.id}-")
            (listed,) = local_jobs(tmp_path / "local-jobs")
            assert listed["state"] == "RUNNING"
            more = await client.submit("hello", site="laptop", params={"n": 2})
            assert (await more.result(timeout=30)).state == "JOB_FINISHED"
            # Started again, the agent adopts the job: same scheduler id, no second job.
            again = await c.start_agent(site_dir, name="agent-2")
            await again.wait_for("agent of laptop connected")
            assert len(local_jobs(tmp_path / "local-jobs")) == 1
            j = await job_state(client, job.id)
            assert (j.state, j.scheduler_id, j.pilots) == ("running", sched_id, 1)
            # And it is under the new agent's control.
            await client.queue_cancel(job.id)

            async def cancelled() -> bool:
                return (await job_state(client, job.id)).state == "finished"

            await until(cancelled, what="the adopted job to be cancelled")
            assert local_jobs(tmp_path / "local-jobs")[0]["state"] == "CANCELLED"
