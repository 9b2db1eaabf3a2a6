"""A controller restart never sends a task that already ran on a live pilot to another one.

The driver runs in-process on a real SQLite file, twice on the same store;
pilots are fake peers that say exactly what a real pilot's Hello says.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from tidewater import proto as P
from tidewater.config import ControllerConfig, Timeouts
from tidewater.controller.service import ControllerService
from tidewater.controller.users import add_user

from .test_service import WELCOME, FakePeer


@asynccontextmanager
async def running(db: str, lease: float = 30.0) -> AsyncIterator[ControllerService]:
    c = ControllerService(ControllerConfig(db=db, timeouts=Timeouts(lease_timeout=lease)))
    async with anyio.create_task_group() as tg:
        await tg.start(c.run)
        yield c
        tg.cancel_scope.cancel()


def hello(c: ControllerService, who: Any, peer: FakePeer, pilot_id: str, credit: int,
          held: list[tuple[int, int]] | None = None) -> Any:
    c.connected(who, peer)
    return c.on_pilot_hello(who, peer, P.Hello(
        role="pilot", proto_version=1, token="", site="s", pilot_id=pilot_id, cores=1,
        credit_cores=credit, held=held or []), WELCOME)


async def settle(c: ControllerService) -> None:
    """Everything queued is committed, its effects delivered, and the dispatcher has looked."""
    with anyio.fail_after(5):
        await c.store.commit([])
    c._execute(c.state.dispatch(time.time()))


def sent_tasks(peer: FakePeer) -> list[tuple[int, int]]:
    return [(a.task_id, a.attempt) for m in peer.sent if isinstance(m, P.RunTasks)
            for a in m.tasks]


async def first_life(db: str) -> tuple[str, int]:
    """A task sent to pilot "a" (attempt 1), whose reports never reach the store."""
    token = await add_user(db, "alice")
    async with running(db) as c:
        who = await c.authenticate(token)
        client = FakePeer(1)
        c.connected(who, client)
        await c.on_client(who, client, P.AddSite(req_id=1, name="s"))
        await c.on_client(who, client, P.AddApp(req_id=2, site="s", name="t",
                                                command="/bin/true"))
        a = FakePeer(2)
        hello(c, who, a, "a", credit=1)
        hello(c, who, FakePeer(3), "b", credit=0)
        await c.on_client(who, client, P.Submit(req_id=3, tasks=[P.TaskSpec(app="t",
                                                                            site="s")]))
        (tid,) = (await client.next(P.Submitted)).ids
        await a.next(P.RunTasks)
        assert sent_tasks(a) == [(tid, 1)]
        # The controller dies here (kill -9): pilot "a" ran the task meanwhile and
        # holds its finished report, not yet acknowledged.
    return token, tid


async def test_a_task_run_before_the_crash_is_adopted_never_sent_elsewhere(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "restart.db")
    token, tid = await first_life(db)
    async with running(db) as c:
        who = await c.authenticate(token)
        b = FakePeer(13)
        hello(c, who, b, "b", credit=1)  # back first, with room for the task
        await settle(c)
        assert sent_tasks(b) == []  # site held: pilot "a" is expected back
        a = FakePeer(12)
        rec = hello(c, who, a, "a", credit=0, held=[(tid, 1)])
        await settle(c)
        assert sent_tasks(b) == [] and sent_tasks(a) == []
        await c.on_pilot(rec, P.Reports(seq=1, reports=[
            P.Report(task_id=tid, attempt=1, kind="started", time=time.time()),
            P.Report(task_id=tid, attempt=1, kind="done", time=time.time(), exit_code=0)]))
        assert (await a.next(P.Ack)).seq == 1
        await settle(c)
        assert sent_tasks(b) == []
    conn = sqlite3.connect(db)
    try:
        state, attempt, pilot = conn.execute(
            "SELECT state, attempt, pilot FROM tasks WHERE id = ?", (tid,)).fetchone()
        events = conn.execute("SELECT from_state, to_state, data FROM events WHERE task_id = ? "
                              "ORDER BY id", (tid,)).fetchall()
    finally:
        conn.close()
    assert (state, attempt, pilot) == ("JOB_FINISHED", 1, "a")
    started = [e for e in events if e[1] == "RUNNING"]
    assert len(started) == 1 and '"attempt":1' in started[0][2]


async def test_a_pilot_that_never_comes_back_releases_its_site_after_its_lease(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "restart.db")
    token, tid = await first_life(db)
    async with running(db, lease=0.5) as c:
        who = await c.authenticate(token)
        b = FakePeer(13)
        hello(c, who, b, "b", credit=1)
        await settle(c)
        assert sent_tasks(b) == []
        # Pilot "b" heartbeats (as a pilot does, at a fifth of the lease); pilot "a"
        # stays silent and its lease runs out.
        rec_b = c.state.pilots.pilots["b"]
        with anyio.fail_after(10):
            while not sent_tasks(b):
                await c.on_pilot(rec_b, P.Heartbeat(time=time.time()))
                await anyio.sleep(0.1)
        assert sent_tasks(b) == [(tid, 1)]
        assert "a" not in c.state.pilots.pilots


async def test_a_pilot_back_without_the_task_gets_it_requeued_at_once(tmp_path: Path) -> None:
    """The task never reached pilot "a" (the frame was lost with the crash): it goes out again."""
    db = str(tmp_path / "restart.db")
    token, tid = await first_life(db)
    async with running(db) as c:
        who = await c.authenticate(token)
        a = FakePeer(12)
        hello(c, who, a, "a", credit=0)
        b = FakePeer(13)
        hello(c, who, b, "b", credit=1)
        await settle(c)
        await settle(c)
        assert sent_tasks(b) == [(tid, 1)]
