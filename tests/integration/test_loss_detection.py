"""Losing a pilot: a closed connection is noticed within the grace, silence after the lease."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import TaskSpec

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

LONG_LEASE = 120.0  # far longer than any of these tests may take
GRACE = 1.0


async def test_a_killed_pilots_tasks_are_retried_after_the_grace_not_the_lease(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller("--lease-timeout", str(LONG_LEASE),
                                 "--disconnect-grace", str(GRACE))
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            # First attempts run long; retries finish at once.
            await client.add_app("hpc", "work",
                                 '[ "$TIDEWATER_ATTEMPT" -gt 1 ] || sleep 60; echo {i}')
            victim = await c.start_pilot(site_token, pilot_id="victim", cores=2)
            specs = [TaskSpec(app="work", site="hpc", params={"i": str(i)}) for i in range(2)]
            async with client.watch(states=["RUNNING"]) as events:
                tasks = await client.submit_many(specs)
                seen = 0
                async for _ in events:
                    seen += 1
                    if seen == 2:
                        break
            await c.start_pilot(site_token, pilot_id="survivor", cores=2)
            killed_at = time.monotonic()
            victim.kill()
            with anyio.fail_after(LONG_LEASE / 4):
                infos = await client.wait(tasks)
            detected_in = time.monotonic() - killed_at

    assert [(i.state, i.pilot, i.attempt) for i in infos] == [
        ("JOB_FINISHED", "survivor", 2)] * 2
    reasons = [str(r[0]) for r in c.rows("SELECT data FROM events WHERE to_state = 'RUN_TIMEOUT'")]
    assert len(reasons) == 2
    assert all(f"connection closed and it was not back within {GRACE:g}s" in r for r in reasons)
    # Seen here: about 1.0 s with a 1 s grace (docs/reliability.md).
    assert detected_in < LONG_LEASE / 4


async def test_a_frozen_pilot_keeps_its_task_until_its_lease_runs_out(tmp_path: Path) -> None:
    """SIGSTOP: the connection stays open, so the pilot is only silent. Resumed before
    its lease ends, its task is not retried and its result is accepted, once."""
    async with cluster(tmp_path) as c:
        await c.start_controller("--lease-timeout", "6", "--disconnect-grace", str(GRACE))
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep 0.5; echo done")
            pilot = await c.start_pilot(site_token, pilot_id="p1", cores=1)
            async with client.watch(states=["RUNNING"]) as running:
                task = await client.submit("work", site="hpc")
                await running.__anext__()
            pilot.proc.send_signal(signal.SIGSTOP)
            try:
                # Several disconnect graces pass: silence alone must not cost the task.
                with anyio.move_on_after(4 * GRACE):
                    info = await task.result()
                    raise AssertionError(f"the task ended while its pilot was frozen: {info}")
            finally:
                pilot.proc.send_signal(signal.SIGCONT)
            info = await task.result(timeout=30)

    assert (info.state, info.pilot, info.attempt, info.stdout_tail) == (
        "JOB_FINISHED", "p1", 1, "done\n")
    assert c.rows("SELECT count(*) FROM events WHERE to_state = 'RUN_TIMEOUT'") == [(0,)]
