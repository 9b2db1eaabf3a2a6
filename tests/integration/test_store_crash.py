"""kill -9 of a SQLite controller at random moments of a steady load: the file survives.

Tasks are submitted one after another (each acknowledged after its commit)
while a pilot runs and reports them. At a few seeded random moments the
controller is killed with SIGKILL and started again on the same file. Each
time the file must pass ``PRAGMA integrity_check`` and hold every task whose
Submit was acknowledged; at the end every task has finished.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import anyio
import pytest

import tidewater

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SEED = 20261207
KILLS = 4


def check_file(db: str) -> set[int]:
    """The file's integrity check (it must be ok) and the ids of the tasks it holds,
    read as an operator would while no controller runs."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {int(r[0]) for r in conn.execute("SELECT id FROM tasks")}
    finally:
        conn.close()


async def test_kill_9_under_load_keeps_the_file_whole_and_every_acknowledged_task(
    tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    async with cluster(tmp_path, db=str(tmp_path / "tw.db")) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep 0.01; echo {i}")
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
            acked: list[int] = []
            more = anyio.Event()
            stop = anyio.Event()

            async def submit_forever() -> None:
                nonlocal more
                i = 0
                while not stop.is_set():
                    t = await client.submit("work", site="hpc", params={"i": str(i)})
                    acked.append(t.id)
                    i += 1
                    more.set()
                    more = anyio.Event()

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_forever)
                for n in range(1, KILLS + 1):
                    # The moment: after a seeded random number of further acknowledged
                    # submits, while earlier ones are running and being reported.
                    target = len(acked) + rng.randint(3, 40)
                    with anyio.fail_after(60):
                        while len(acked) < target:
                            await more.wait()
                    assert c.controller is not None
                    c.controller.kill()
                    await c.controller.proc.wait()
                    before = set(acked)
                    stored = await anyio.to_thread.run_sync(check_file, c.db)
                    assert before <= stored, f"kill {n}: acknowledged tasks lost: " \
                                             f"{sorted(before - stored)[:10]}"
                    await c.start_controller()
                stop.set()
            infos = await client.wait(acked, timeout=120)

    assert len(acked) > KILLS * 3
    assert [i.state for i in infos] == ["JOB_FINISHED"] * len(acked)
    assert [i.stdout_tail for i in infos] == [f"{k}\n" for k in range(len(acked))]
    stored = check_file(c.db)
    assert stored == set(acked)
