"""Two controller processes on one PostgreSQL store: one leads, the other waits and takes over."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import TaskSpec
from tidewater.controller.store.leader import APP_NAME

from . import pg
from .procs import Cluster, Proc, cluster

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

LISTENING = "controller listening on"
STANDBY = "standby: waiting for the leader's lock on"


async def two_controllers(c: Cluster) -> tuple[Proc, Proc]:
    """The leader on the cluster's first port, a standby on a second; peers get both URLs."""
    standby_port = c.add_controller_port()
    leader = await c.start_controller()
    standby = await c.start_controller(port=standby_port, ready=STANDBY)
    return leader, standby


def check_ledger(c: Cluster, ledger: Path, tasks: list[tidewater.Task]) -> None:
    """Every task ran to completion once, unless its events show an attempt that was lost."""
    counts = Counter(int(x) for x in ledger.read_text().split())
    lost = {int(str(r[0])) for r in c.rows(
        "SELECT task_id FROM events WHERE to_state IN ('RUN_TIMEOUT', 'RESTART_READY')")}
    for i, t in enumerate(tasks):
        assert counts[i] >= 1, f"task {i} never ran"
        if t.id not in lost:
            assert counts[i] == 1, f"task {i} ran {counts[i]} times with no lost attempt"


async def test_the_standby_takes_over_after_kill_9_of_the_leader(
    tmp_path: Path, postgres_url: str,
) -> None:
    ledger = tmp_path / "ledger"
    async with cluster(tmp_path, db=postgres_url) as c:
        leader, standby = await two_controllers(c)
        assert not any(LISTENING in ln for ln in standby.lines)
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep {s} && echo {i} >> {ledger}")
            pilot = await c.start_pilot(site_token, pilot_id="p1", cores=2)
            specs = [TaskSpec(app="work", site="hpc",
                              params={"s": "0.1", "i": str(i), "ledger": str(ledger)})
                     for i in range(60)]
            tasks = await client.submit_many(specs)
            done = 0
            async for _info in client.as_completed(tasks, timeout=60):
                done += 1
                if done == 10:
                    break
            killed_at = time.monotonic()
            leader.kill()
            await standby.wait_for(LISTENING, timeout=30)
            takeover = time.monotonic() - killed_at
            assert takeover < 30
            await pilot.wait_for("pilot p1 connected", count=2, timeout=30)
            back = time.monotonic() - killed_at
            print(f"\nafter kill -9 of the leader: standby listening in {takeover:.2f} s, "  # noqa: T201
                  f"pilot back in {back:.2f} s")
            infos = await client.wait(tasks, timeout=90)
    assert [i.state for i in infos] == ["JOB_FINISHED"] * 60
    assert c.rows("SELECT count(*) FROM tasks") == [(60,)]
    check_ledger(c, ledger, tasks)


def leader_lock_pid(url: str) -> int:
    """The backend of the session holding the leader's advisory lock on ``url``'s database."""
    found = pg.rows(url, (
        "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        "WHERE a.application_name = ? AND a.datname = current_database() "
        "AND l.locktype = 'advisory' AND l.granted"), (APP_NAME,))
    assert len(found) == 1, found
    return int(str(found[0][0]))


async def test_a_leader_that_loses_its_lock_stops_and_the_standby_takes_over(
    tmp_path: Path, postgres_url: str,
) -> None:
    ledger = tmp_path / "ledger"
    async with cluster(tmp_path, db=postgres_url) as c:
        leader, standby = await two_controllers(c)
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep {s} && echo {i} >> {ledger}")
            pilot = await c.start_pilot(site_token, pilot_id="p1", cores=2)
            specs = [TaskSpec(app="work", site="hpc",
                              params={"s": "0.2", "i": str(i), "ledger": str(ledger)})
                     for i in range(20)]
            tasks = await client.submit_many(specs)
            async with client.watch(states=["RUNNING"]) as running:
                await running.__anext__()
            cut_at = time.monotonic()
            pg.admin(f"SELECT pg_terminate_backend({leader_lock_pid(postgres_url)})")
            with anyio.fail_after(15):
                rc = await leader.proc.wait()
            stopped = time.monotonic() - cut_at
            print(f"\nleader exited {stopped:.2f} s after its lock session ended")  # noqa: T201
            assert rc != 0
            assert "lost the leader's lock" in leader.log()
            assert "two controllers never serve at once" in leader.log()
            await pilot.wait_for("1012 controller lost the leader's lock")
            await standby.wait_for(LISTENING, timeout=30)
            await pilot.wait_for("pilot p1 connected", count=2, timeout=30)
            infos = await client.wait(tasks, timeout=60)
    assert [i.state for i in infos] == ["JOB_FINISHED"] * 20
    check_ledger(c, ledger, tasks)
