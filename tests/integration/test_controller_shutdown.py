"""SIGTERM to the controller: it stops listening, commits what is queued, tells every peer
why it closes, exits 0 in time; restarted on the same store, every task finishes once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import TaskSpec
from tidewater.config import Timeouts

from .procs import cluster

pytestmark = [pytest.mark.integration]


async def test_sigterm_shuts_the_controller_down_gracefully_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"
    bound = Timeouts().close
    async with cluster(tmp_path) as c:
        controller = await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep {s} && echo {i} >> {ledger}")
            pilot = await c.start_pilot(site_token, pilot_id="p1", cores=2)
            specs = [TaskSpec(app="work", site="hpc",
                              params={"s": "0.2", "i": str(i), "ledger": str(ledger)})
                     for i in range(30)]
            tasks = await client.submit_many(specs)
            done = 0
            async for _info in client.as_completed(tasks, timeout=60):
                done += 1
                if done == 5:
                    break
            signalled = time.monotonic()
            controller.proc.terminate()
            with anyio.fail_after(bound + 5):  # the bound, and a process's start-up slack
                rc = await controller.proc.wait()
            took = time.monotonic() - signalled
            print(f"\ncontroller exited {rc} {took:.2f} s after SIGTERM")  # noqa: T201
            assert rc == 0
            assert took < bound + 1
            said = controller.log()
            for line in ("SIGTERM: shutting down gracefully",
                         "shutting down: stopped listening and reading",
                         "shutting down: every queued write is committed",
                         "shutting down: closed 2 connections (1012 controller shutting down)",
                         "controller stopped"):
                assert line in said, f"{line!r} not in the controller's log:\n{said}"
            await pilot.wait_for("1012 controller shutting down")

            await c.start_controller()
            await pilot.wait_for("pilot p1 connected", count=2, timeout=30)
            infos = await client.wait(tasks, timeout=60)
    assert [i.state for i in infos] == ["JOB_FINISHED"] * 30
    counts = Counter(int(x) for x in ledger.read_text().split())
    assert counts == Counter(range(30)), "every task ran exactly once"
    assert c.rows("SELECT count(*) FROM events WHERE to_state = 'RUN_TIMEOUT'") == [(0,)]
