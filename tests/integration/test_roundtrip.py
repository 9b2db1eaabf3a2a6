"""A real controller process, two real pilot processes, a client over loopback."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import ParamSpec, TaskInfo, TaskSpec

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


def _processes_running(needle: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


async def test_thousand_tasks_round_trip(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("laptop")
            await client.add_app("laptop", "square", "expr {n} '*' {n} + 1",
                                 params=[ParamSpec(name="n", type="int")])
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
            await c.start_pilot(site_token, pilot_id="p2", cores=2)
            specs = [TaskSpec(app="square", site="laptop", params={"n": i},
                              tags={"run": "42"}) for i in range(1000)]
            tasks = await client.submit_many(specs)
            assert len({t.id for t in tasks}) == 1000
            infos = await client.wait(tasks, timeout=120)

        assert [i.state for i in infos] == ["JOB_FINISHED"] * 1000
        assert [i.stdout_tail for i in infos] == [f"{n * n + 1}\n" for n in range(1000)]
        assert all(i.exit_code == 0 for i in infos)
        # Both pilots took part, and every task ran exactly once.
        assert {i.pilot for i in infos} == {"p1", "p2"}
        assert {i.attempt for i in infos} == {1}
        # The store holds every task final, with its whole history.
        assert c.rows("SELECT state, count(*) FROM tasks GROUP BY state") == [
            ("JOB_FINISHED", 1000)
        ]
        per_task = c.rows("SELECT to_state FROM events WHERE task_id = ? ORDER BY id",
                          (tasks[0].id,))
        assert [r[0] for r in per_task] == [
            "READY", "STAGED_IN", "RUNNING", "RUN_DONE", "STAGED_OUT", "JOB_FINISHED"
        ]
        assert c.rows("SELECT count(*) FROM events") == [(6000,)]


async def test_watch_pushes_events_and_cancel_kills(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("laptop")
            await client.add_app("laptop", "nap", "sleep {s}")
            await c.start_pilot(site_token, pilot_id="p1", cores=1)
            async with client.watch(tags={"run": "7"}) as events:
                task = await client.submit("nap", site="laptop", params={"s": "60"},
                                           tags={"run": "7"})
                seen = []
                async for e in events:
                    seen.append(e.to_state)
                    if e.to_state == "RUNNING":
                        assert await task.cancel() is True
                    if e.to_state == "KILLED":
                        break
            assert seen == ["READY", "STAGED_IN", "RUNNING", "KILLED"]
            info = await task.result(timeout=10)
            assert info.state == "KILLED"
            # The pilot is free again: the next task runs at once.
            quick = await client.submit("nap", site="laptop", params={"s": "0"})
            assert (await quick.result(timeout=20)).state == "JOB_FINISHED"
            assert (await client.tasks(state="KILLED"))[0].id == task.id
            assert [t.id for t in await client.tasks(tags={"run": "7"})] == [task.id]
            counts = await client.count()
            assert counts.by_state == {"JOB_FINISHED": 1, "KILLED": 1}
            assert counts.by_site == {"laptop": {"JOB_FINISHED": 1, "KILLED": 1}}
            assert counts.total == 2
            assert (await client.count(tags={"run": "7"})).by_state == {"KILLED": 1}
            assert (await client.count(state="RUNNING")).total == 0
            # Time windows: both tasks were created before now, none after.
            now = time.time()
            assert (await client.count(until=now + 1)).total == 2
            assert (await client.count(since=now + 1)).total == 0
            assert (await client.count(since=info.created_at, until=now + 1)).by_state == {
                "JOB_FINISHED": 1, "KILLED": 1}
            with pytest.raises(tidewater.NotFound):
                await client.count(site="elsewhere")
            with pytest.raises(tidewater.InvalidRequest, match="unknown state") as bad:
                await client.count(state="DONE")
            # The states a filter takes: never CREATED, which no stored task is in.
            assert "READY" in str(bad.value) and "CREATED" not in str(bad.value)
            everything = [t.id for t in await client.tasks()]
            assert everything == [task.id, quick.id]
            assert [t.id for t in await client.tasks(limit=1)] == [task.id]
            assert [t.id for t in await client.tasks(limit=1, newest=True)] == [quick.id]
            assert [t.id for t in await client.tasks(after_id=task.id)] == [quick.id]
            # History replays from the store: everything after event 1 (its READY).
            async with client.watch(ids=[task.id], since_event=1) as replay:
                again = [(await replay.__anext__()).to_state for _ in range(3)]
            assert again == ["STAGED_IN", "RUNNING", "KILLED"]


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = "31.4159"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            # A task that leaves a background child behind, and would run for minutes.
            await client.add_app("hpc", "hang", "sleep {s} & sleep {s}; wait")
            await c.start_pilot(site_token, pilot_id="p1", cores=1)
            task = await client.submit("hang", site="hpc", params={"s": marker}, timeout=0.5,
                                       max_retries=1)
            info = await task.result(timeout=60)
        assert info.state == "FAILED"
        assert info.attempt == 2 and info.retries == 1
        assert "timed out after 0.5s" in info.error
        history = [r[0] for r in c.rows(
            "SELECT to_state FROM events WHERE task_id = ? ORDER BY id", (task.id,))]
        assert history == ["READY", "STAGED_IN", "RUNNING", "RUN_TIMEOUT", "RESTART_READY",
                           "RUNNING", "RUN_TIMEOUT", "FAILED"]
        # Neither the shell nor its background child survived.
        assert _processes_running(f"sleep {marker}") == []


async def test_sync_facade(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")

        def notebook() -> tuple[list[TaskInfo], str]:
            with tidewater.connect_sync(c.url, token=token) as client:
                _site, site_token = client.add_site("nb")
                client.add_app("nb", "hello", "echo hello {name}")
                return client.tasks(), site_token

        infos, site_token = await anyio.to_thread.run_sync(notebook)
        assert infos == []
        await c.start_pilot(site_token, pilot_id="nb-pilot")

        def run_tasks() -> list[TaskInfo]:
            with tidewater.connect_sync(c.url, token=token) as client:
                one = client.submit("hello", site="nb", params={"name": "sync"})
                assert one.result(timeout=30).stdout_tail == "hello sync\n"
                many = client.submit_many(
                    [TaskSpec(app="hello", site="nb", params={"name": str(i)}) for i in range(5)])
                return client.wait(many, timeout=30)

        done = await anyio.to_thread.run_sync(run_tasks)
        assert [i.stdout_tail for i in done] == [f"hello {i}\n" for i in range(5)]
