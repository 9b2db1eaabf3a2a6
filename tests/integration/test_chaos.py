"""kill -9 of a pilot and of the controller: nothing acknowledged is lost."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import TaskInfo, TaskSpec

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.usefixtures("store")]


async def test_kill_pilot_retries_its_tasks_elsewhere(tmp_path: Path) -> None:
    log = tmp_path / "completions.log"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep {s} && echo {i} >> {log}")
            victim = await c.start_pilot(site_token, pilot_id="victim", cores=2)
            await c.start_pilot(site_token, pilot_id="survivor", cores=2)
            specs = [TaskSpec(app="work", site="hpc", params={"s": "0.4", "i": str(i),
                                                               "log": str(log)})
                     for i in range(30)]
            on_victim: set[int] = set()
            async with client.watch(states=["RUNNING"]) as events:
                tasks = await client.submit_many(specs)
                async for e in events:
                    if e.data.get("pilot") == "victim":
                        on_victim.add(e.task_id)
                        if len(on_victim) == 2:
                            victim.kill()
                            break
            infos = await client.wait(tasks, timeout=90)

    assert [i.state for i in infos] == ["JOB_FINISHED"] * 30
    by_id = {i.id: i for i in infos}
    # What the victim was running was retried on the survivor after its lease ran out.
    for tid in on_victim:
        assert by_id[tid].pilot == "survivor"
        assert by_id[tid].attempt >= 2
        assert by_id[tid].retries >= 1
    lost = c.rows("SELECT task_id, data FROM events WHERE to_state = 'RUN_TIMEOUT'")
    assert {r[0] for r in lost} >= on_victim
    assert all("victim" in str(r[1]) and "lost" in str(r[1]) for r in lost)
    # No task ran to completion twice unless its first attempt was lost with the victim.
    counts = Counter(int(x) for x in log.read_text().split())
    id_of = {i: t.id for i, t in enumerate(tasks)}
    for i in range(30):
        assert counts[i] >= 1
        if by_id[id_of[i]].retries == 0:
            assert counts[i] == 1, f"task {i} completed {counts[i]} times"


async def test_kill_controller_mid_run_loses_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep {s} && echo {i}")
            p1 = await c.start_pilot(site_token, pilot_id="p1", cores=2)
            p2 = await c.start_pilot(site_token, pilot_id="p2", cores=2)
            specs = [TaskSpec(app="work", site="hpc", params={"s": "0.05", "i": str(i)})
                     for i in range(200)]
            # A watch open across the crash hears of every task finishing, once.
            watch = client.watch(states=["JOB_FINISHED"])
            await watch.__aenter__()
            tasks = await client.submit_many(specs)
            finished: list[TaskInfo] = []
            async for info in client.as_completed(tasks, timeout=60):
                finished.append(info)
                if len(finished) == 40:
                    assert c.controller is not None
                    c.controller.kill()
                    break
            assert c.controller is not None
            await c.controller.stop()

            # A submission made while the controller is down is sent once it is back.
            late: list[tidewater.Task] = []

            async def submit_late() -> None:
                late.append(await client.submit("work", site="hpc",
                                                params={"s": "0", "i": "late"}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_late)
                await c.start_controller()
            await p1.wait_for("pilot p1 connected", count=2)
            await p2.wait_for("pilot p2 connected", count=2)
            infos = await client.wait([*tasks, *late], timeout=90)
            heard: list[int] = []
            with anyio.fail_after(30):
                async for event in watch:
                    heard.append(event.task_id)
                    if len(heard) == 201:
                        break
            await watch.aclose()
            assert sorted(heard) == sorted(t.id for t in [*tasks, *late])

    assert [i.state for i in infos] == ["JOB_FINISHED"] * 201
    assert [i.stdout_tail for i in infos] == [f"{i}\n" for i in range(200)] + ["late\n"]
    assert c.rows("SELECT count(*) FROM tasks") == [(201,)]
    assert c.rows("SELECT count(*) FROM tasks WHERE state != 'JOB_FINISHED'") == [(0,)]


async def test_frozen_controller_is_detected_and_work_completes(tmp_path: Path) -> None:
    """A controller that stops answering (SIGSTOP: TCP still up) is noticed by the
    pilot's own liveness check; after it resumes, the pilot reconnects and the
    work finishes."""
    async with cluster(tmp_path) as c:
        controller = await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "work", "sleep {s} && echo {i}")
            pilot = await c.start_pilot(site_token, pilot_id="p1", cores=1)
            async with client.watch(states=["RUNNING"]) as running:
                task = await client.submit("work", site="hpc", params={"s": "1", "i": "x"})
                await running.__anext__()
            controller.proc.send_signal(signal.SIGSTOP)
            try:
                await pilot.wait_for("no word from the controller", timeout=30)
            finally:
                controller.proc.send_signal(signal.SIGCONT)
            await pilot.wait_for("pilot p1 connected", count=2, timeout=30)
            info = await task.result(timeout=60)
    assert info.state == "JOB_FINISHED"
    assert info.stdout_tail == "x\n"


async def test_stopped_pilot_hands_its_work_back_at_once(tmp_path: Path) -> None:
    """SIGTERM to a pilot: it kills its tasks, says Bye, exits; the controller requeues
    them without waiting for the lease, and another pilot finishes them."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            # The first attempt would run for a minute; later ones finish at once.
            await client.add_app("hpc", "slow_once",
                                 '[ "$TIDEWATER_ATTEMPT" -gt 1 ] || sleep 60; echo ok')
            first = await c.start_pilot(site_token, pilot_id="first", cores=1)
            async with client.watch(states=["RUNNING"]) as running:
                task = await client.submit("slow_once", site="hpc")
                await running.__anext__()
            first.proc.terminate()
            with anyio.fail_after(15):
                assert await first.proc.wait() == 0
            await c.start_pilot(site_token, pilot_id="second", cores=1)
            info = await task.result(timeout=30)
    assert info.state == "JOB_FINISHED"
    assert (info.attempt, info.pilot, info.stdout_tail) == (2, "second", "ok\n")
    reasons = c.rows("SELECT data FROM events WHERE to_state = 'RUN_TIMEOUT'")
    assert len(reasons) == 1 and "the pilot was stopped" in str(reasons[0][0])
