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
