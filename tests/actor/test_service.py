"""The controller's driver (service) run in-process through fake peers, on a real SQLite store."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from tidewater import proto as P
from tidewater.config import ControllerConfig
from tidewater.controller.service import ControllerService
from tidewater.controller.users import add_user
from tidewater.errors import InvalidRequest

M = TypeVar("M", bound=P.Msg)


class FakePeer:
    def __init__(self, peer_id: int) -> None:
        self.id = peer_id
        self.sent: list[P.Msg] = []
        self.closed: tuple[int, str] | None = None
        self._seen = 0
        self._arrived = anyio.Event()

    def send(self, msg: P.Msg) -> None:
        self.sent.append(msg)
        self._arrived.set()
        self._arrived = anyio.Event()

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def next(self, kind: type[M]) -> M:
        """The next message of ``kind`` (earlier ones of other kinds are skipped)."""
        with anyio.fail_after(10):
            while True:
                while self._seen < len(self.sent):
                    msg = self.sent[self._seen]
                    self._seen += 1
                    if isinstance(msg, kind):
                        return msg
                    if isinstance(msg, P.Error):
                        raise AssertionError(f"controller error: {msg}")
                await self._arrived.wait()


WELCOME = P.Welcome(proto_version=1, server_id="x")


def pilot_hello(c: ControllerService, who: Any, peer: FakePeer, **kw: Any) -> Any:
    c.connected(who, peer)
    return c.on_pilot_hello(who, peer, P.Hello(role="pilot", proto_version=1, token="", **kw),
                            WELCOME)


@pytest.fixture
async def controller(tmp_path: Path) -> Any:
    db = str(tmp_path / "core.db")
    token = await add_user(db, "alice")
    c = ControllerService(ControllerConfig(db=db))
    async with anyio.create_task_group() as tg:
        await tg.start(c.run)
        who = await c.authenticate(token)
        client = FakePeer(1)
        c.connected(who, client)
        await c.on_client(who, client, P.AddSite(req_id=1, name="s"))
        await client.next(P.SiteAdded)
        await c.on_client(who, client, P.AddApp(req_id=2, site="s", name="t",
                                                command="/bin/true"))
        await client.next(P.AppAdded)
        yield c, who, client, db
        tg.cancel_scope.cancel()


async def test_started_and_done_committed_apart_never_strand_a_result(controller: Any) -> None:
    """A task leaves memory only once its final row is committed.

    Reports for one task arrive in two frames; memory is final before the
    first frame's commit. Whatever the batching, after every commit each
    task that has left memory has a final row, and finishes are counted once.
    """
    c, who, client, db = controller
    pilot = FakePeer(2)
    rec = pilot_hello(c, who, pilot, site="s", pilot_id="p", cores=1, credit_cores=64)
    n = 50
    await c.on_client(who, client, P.Submit(req_id=3, tasks=[P.TaskSpec(app="t", site="s")] * n))
    ids = (await client.next(P.Submitted)).ids
    assigned: list[P.Assignment] = []
    while len(assigned) < n:
        assigned += (await pilot.next(P.RunTasks)).tasks

    violations: list[tuple[int, str]] = []
    original = c.store.after_batch

    def check_invariant() -> None:
        conn = sqlite3.connect(db)
        try:
            rows = dict(conn.execute("SELECT id, state FROM tasks").fetchall())
        finally:
            conn.close()
        for tid in ids:
            if tid not in c.state.tasks.live and rows[tid] not in ("JOB_FINISHED", "FAILED", "KILLED"):
                violations.append((tid, rows[tid]))
        assert original is not None
        original()

    c.store.after_batch = check_invariant
    seq = 0
    for a in assigned:
        for kind in ("started", "done"):
            seq += 1
            await c.on_pilot(rec, P.Reports(seq=seq, reports=[P.Report(
                task_id=a.task_id, attempt=a.attempt, kind=kind, time=time.time(),
                exit_code=0 if kind == "done" else None)]))
    while (await pilot.next(P.Ack)).seq < seq:
        pass

    assert violations == []
    assert c.state.tasks.counters["tasks_finished"] == n
    await c.on_client(who, client, P.Wait(req_id=4, ids=ids))
    results = await client.next(P.Results)
    assert sorted(i.id for i in results.tasks) == ids
    assert {i.state for i in results.tasks} == {"JOB_FINISHED"}


async def test_report_from_a_superseded_attempt_is_ignored(controller: Any) -> None:
    c, who, client, _db = controller
    pilot = FakePeer(2)
    rec = pilot_hello(c, who, pilot, site="s", pilot_id="p", cores=1, credit_cores=1)
    await c.on_client(who, client, P.Submit(req_id=3, tasks=[P.TaskSpec(app="t", site="s")]))
    (tid,) = (await client.next(P.Submitted)).ids
    (a,) = (await pilot.next(P.RunTasks)).tasks
    stale = P.Report(task_id=tid, attempt=a.attempt + 7, kind="done", time=time.time(),
                     exit_code=0)
    await c.on_pilot(rec, P.Reports(seq=1, reports=[stale]))
    assert (await pilot.next(P.Ack)).seq == 1
    assert c.state.tasks.counters["stale_reports"] == 1
    assert c.state.tasks.live[tid].state == "STAGED_IN"
    # A report from a pilot the task is not assigned to is just as stale.
    other = FakePeer(3)
    rec2 = pilot_hello(c, who, other, site="s", pilot_id="q", cores=1)
    await c.on_pilot(rec2, P.Reports(seq=1, reports=[
        P.Report(task_id=tid, attempt=a.attempt, kind="started", time=time.time())]))
    assert (await other.next(P.Ack)).seq == 1
    assert c.state.tasks.live[tid].state == "STAGED_IN"
    assert c.state.tasks.counters["stale_reports"] == 2


async def test_resent_submit_after_restart_creates_nothing_twice(tmp_path: Path) -> None:
    db = str(tmp_path / "core.db")
    token = await add_user(db, "alice")
    spec = P.TaskSpec(app="t", site="s")
    first_ids: list[int] = []
    for life in (1, 2):  # the same store, before and after a controller restart
        c = ControllerService(ControllerConfig(db=db))
        async with anyio.create_task_group() as tg:
            await tg.start(c.run)
            who = await c.authenticate(token)
            client = FakePeer(1)
            c.connected(who, client)
            if life == 1:
                await c.on_client(who, client, P.AddSite(req_id=1, name="s"))
                await client.next(P.SiteAdded)
                await c.on_client(who, client, P.AddApp(req_id=2, site="s", name="t",
                                                      command="/bin/true"))
                await client.next(P.AppAdded)
                await c.on_client(who, client, P.Submit(req_id=3, tasks=[spec] * 3, key="k1"))
                first_ids = (await client.next(P.Submitted)).ids
                # The same frame again on the same controller: same ids.
                await c.on_client(who, client, P.Submit(req_id=4, tasks=[spec] * 3, key="k1"))
                assert (await client.next(P.Submitted)).ids == first_ids
            else:
                # The acknowledgement was lost with the old controller; the client resends.
                await c.on_client(who, client, P.Submit(req_id=3, tasks=[spec] * 3, key="k1",
                                                     resend=True))
                assert (await client.next(P.Submitted)).ids == first_ids
                await c.on_client(who, client, P.Submit(req_id=4, tasks=[spec], key="k2",
                                                     resend=True))
                (new_id,) = (await client.next(P.Submitted)).ids
                assert new_id == max(first_ids) + 1
            tg.cancel_scope.cancel()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (4,)
    finally:
        conn.close()


async def test_reconnecting_pilot_is_welcomed_before_told_to_kill(controller: Any) -> None:
    c, who, _client, _db = controller
    pilot = FakePeer(2)
    pilot_hello(c, who, pilot, site="s", pilot_id="p", cores=1, held=[(999, 3)])
    assert pilot.sent[0] == P.Welcome(proto_version=1, server_id="x", site="s")
    assert pilot.sent[1] == P.Kill(tasks=[(999, 3)], reason="no longer assigned to this pilot")


async def test_watch_gets_every_event_once_in_commit_order(controller: Any) -> None:
    c, who, client, _db = controller
    watcher = FakePeer(5)
    c.connected(who, watcher)
    await c.on_client(who, watcher, P.Watch(req_id=1))
    await watcher.next(P.Watching)
    submitters = [FakePeer(10 + k) for k in range(20)]

    async def submit(k: int) -> None:
        tasks = [P.TaskSpec(app="t", site="s", tags={"k": str(k)})] * (k % 3 + 1)
        c.connected(who, submitters[k])
        await c.on_client(who, submitters[k], P.Submit(req_id=1, tasks=tasks, key=f"key{k}"))
        await submitters[k].next(P.Submitted)

    async with anyio.create_task_group() as tg:
        for k in range(20):
            tg.start_soon(submit, k)
    expected = sum(k % 3 + 1 for k in range(20)) * 2  # READY and STAGED_IN each
    got: list[P.TaskEvent] = []
    while len(got) < expected:
        got += (await watcher.next(P.Events)).events
    ids = [e.id for e in got]
    assert ids == sorted(set(ids))
    assert len(ids) == expected


async def test_pilot_hello_errors_say_what_to_do(controller: Any) -> None:
    c, who, _client, _db = controller
    from tidewater.errors import NotFound

    def hello(**kw: Any) -> P.Hello:
        return P.Hello(role="pilot", proto_version=1, token="", pilot_id="p", cores=1, **kw)

    with pytest.raises(InvalidRequest, match="must name its site"):
        c.on_pilot_hello(who, FakePeer(2), hello(), WELCOME)
    with pytest.raises(NotFound, match="no site named 'nowhere'"):
        c.on_pilot_hello(who, FakePeer(2), hello(site="nowhere"), WELCOME)
    with pytest.raises(InvalidRequest, match="pilot_id of 1-128"):
        c.on_pilot_hello(who, FakePeer(2), P.Hello(role="pilot", proto_version=1, token="",
                                                    site="s", pilot_id="", cores=1), WELCOME)
    assert c.state.pilots.pilots == {}


async def test_replaying_watch_delivers_history_then_live_events_in_order(
    controller: Any,
) -> None:
    """Events committed while a watch replays history come after it, none lost or repeated."""
    c, who, client, _db = controller
    await c.on_client(who, client, P.Submit(req_id=3, tasks=[P.TaskSpec(app="t", site="s")] * 20))
    await client.next(P.Submitted)
    watcher = FakePeer(5)
    c.connected(who, watcher)

    async def more() -> None:
        for k in range(20):
            await c.on_client(who, client, P.Submit(req_id=10 + k,
                                                 tasks=[P.TaskSpec(app="t", site="s")]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(more)
        await c.on_client(who, watcher, P.Watch(req_id=1, since_event=1))
    got: list[P.TaskEvent] = []
    while len(got) < 2 * 40 - 1:  # READY and STAGED_IN of 40 tasks, after event 1
        got += (await watcher.next(P.Events)).events
    ids = [e.id for e in got]
    assert ids == list(range(2, 2 * 40 + 1))


async def test_a_burst_of_hellos_with_one_token_reads_it_once(controller: Any) -> None:
    """After a restart a batch job's pilots all present its token at once: one store read
    serves them, and each secret is still checked on its own."""
    c, _who, client, _db = controller
    await c.on_client(_who, client, P.AddSite(req_id=3, name="burst"))
    token = (await client.next(P.SiteAdded)).token
    reads: list[str] = []
    read = c.store.token

    async def counted(token_id: str) -> Any:
        reads.append(token_id)
        return await read(token_id)

    c.store.token = counted
    got: list[Any] = []
    refused: list[str] = []

    async def hello(raw: str) -> None:
        try:
            got.append(await c.authenticate(raw))
        except InvalidRequest as exc:
            refused.append(exc.message)

    async with anyio.create_task_group() as tg:
        for k in range(200):
            tg.start_soon(hello, token if k != 100 else token[:-4] + "AAAA")
    assert len(got) == 199 and all(w.site_id is not None for w in got)
    assert refused == ["invalid token"]
    assert 1 <= len(reads) < 10
    await hello(token)  # a later Hello reads again
    assert len(got) == 200 and len(reads) >= 2
