"""`tidewater backup` while the controller works, then a controller on the copy.

A real controller runs a steady stream of submits and finishing tasks; the
backup is taken in the middle of it by the real command line. A controller
started on the copy (on PostgreSQL: on a fresh database the dump was
restored into) serves every task committed before the backup began, each in a
state its own event log agrees with.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import Client

from . import pg
from .procs import PY, Cluster, cluster

pytestmark = pytest.mark.integration


@dataclass
class Load:
    """Tasks submitted one after another (each acknowledged) while a pilot runs them."""

    client: Client
    acked: list[int] = field(default_factory=list)
    stop: anyio.Event = field(default_factory=anyio.Event)

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            t = await self.client.submit("work", site="hpc", params={"i": str(i)})
            self.acked.append(t.id)
            i += 1


@dataclass
class Before:
    """What was committed before the backup began."""

    acked: set[int]
    finished: set[int]


@asynccontextmanager
async def busy_controller(c: Cluster) -> AsyncIterator[tuple[Load, str]]:
    await c.start_controller()
    token = await c.add_user("alice")
    async with tidewater.connect(c.url, token=token) as client:
        _site, site_token = await client.add_site("hpc")
        await client.add_app("hpc", "work", "sleep 0.02; echo {i}")
        await c.start_pilot(site_token, pilot_id="p1", cores=2)
        load = Load(client)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            with anyio.fail_after(60):
                while len(await client.tasks(state="JOB_FINISHED", limit=20)) < 20:
                    await client.wait(load.acked[-1:])
            yield load, token
            load.stop.set()


async def backup_mid_run(c: Cluster, load: Load, dest: Path) -> tuple[Before, int, str]:
    """Run `tidewater backup` now; what was committed before it, its task count, its output."""
    before = Before(set(load.acked),
                    {t.id for t in await load.client.tasks(state="JOB_FINISHED", limit=100_000)})
    n = len(load.acked)
    with anyio.fail_after(120):
        proc = await anyio.run_process(
            [PY, "-m", "tidewater", "backup", str(dest), "--db", c.db], env=c.env, check=False)
    out = proc.stderr.decode()
    assert proc.returncode == 0, out
    assert len(load.acked) > n, "the backup did not run while tasks were being submitted"
    m = re.search(r"copied .* to (.*): (\d+) tasks, ([\d,]+) bytes", out)
    assert m is not None, out
    assert m.group(1) == str(dest)
    return before, int(m.group(2)), out


async def check_copy(c2: Cluster, token: str, before: Before, tasks: int) -> None:
    """A controller on the copy serves what was committed before the backup, consistently."""
    await c2.start_controller()
    async with tidewater.connect(c2.url, token=token) as client:
        seen = {t.id: t for t in await client.tasks(limit=100_000)}
    assert len(seen) == tasks
    assert before.acked <= set(seen)
    assert all(seen[i].state == "JOB_FINISHED" for i in before.finished)
    assert all(seen[i].stdout_tail for i in before.finished)
    # Every task's state is the one its last event led to: no half-copied transition.
    last = dict(c2.rows("SELECT e.task_id, e.to_state FROM events e JOIN "
                        "(SELECT task_id, max(id) AS id FROM events GROUP BY task_id) m "
                        "ON e.id = m.id"))
    for tid, info in seen.items():
        assert last.get(tid, "READY") == info.state, (tid, info.state, last.get(tid))


async def test_sqlite_backup_under_load_starts_a_controller(tmp_path: Path) -> None:
    dest = tmp_path / "copies" / "tw-copy.db"
    dest.parent.mkdir()
    async with cluster(tmp_path / "live") as c:
        async with busy_controller(c) as (load, token):
            before, tasks, out = await backup_mid_run(c, load, dest)
            assert "to restore: stop the controller and start it on the copy" in out
            # A second backup to the same file is refused unless --force.
            again = await anyio.run_process(
                [PY, "-m", "tidewater", "backup", str(dest), "--db", c.db], env=c.env,
                check=False)
            assert again.returncode != 0
            assert f"{dest} exists: give another DEST, or --force" in again.stderr.decode()
    # One self-contained file, no temporary or -wal left beside it.
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tw-copy.db"]
    conn = sqlite3.connect(dest)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    async with cluster(tmp_path / "restored", db=str(dest)) as c2:
        await check_copy(c2, token, before, tasks)


@pytest.mark.postgres
async def test_postgres_backup_under_load_restores_into_a_fresh_database(
    tmp_path: Path, postgres_url: str
) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump and pg_restore are not on PATH: install postgresql-client")
    dest = tmp_path / "tw.dump"
    async with cluster(tmp_path / "live", db=postgres_url) as c:
        async with busy_controller(c) as (load, token):
            before, tasks, out = await backup_mid_run(c, load, dest)
            assert "pg_restore" in out
    with pg.fresh_database() as restored:
        with anyio.fail_after(120):
            await anyio.run_process(["pg_restore", "--no-owner", "-d", restored, str(dest)],
                                    env=dict(os.environ))
        async with cluster(tmp_path / "restored", db=restored) as c2:
            await check_copy(c2, token, before, tasks)


async def test_backup_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    proc = await anyio.run_process(
        [PY, "-m", "tidewater", "backup", str(tmp_path / "copy.db"), "--db", str(junk)],
        check=False)
    assert proc.returncode != 0
    assert f"refusing store {junk}: the file is not a SQLite database" in proc.stderr.decode()
    assert not (tmp_path / "copy.db").exists()
