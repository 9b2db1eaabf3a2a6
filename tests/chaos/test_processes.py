"""kill -9 of a pilot, of the site agent and of the controller, at seeded points of a
workload of short tasks: nothing acknowledged is lost, nothing runs twice unseen."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from ..integration.procs import LEASE
from .invariants import assert_holds
from .report import Row
from .workload import World, world

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


async def standard(w: World, direct: int = 3) -> list[str]:
    """The agent with its one-node batch job, and ``direct`` pilots started by hand."""
    await w.start_agent()
    pilots = [await w.start_job()]
    for i in range(direct):
        await w.start_pilot(f"p{i}")
        pilots.append(f"p{i}")
    return pilots


async def test_kill_pilots(tmp_path: Path, chaos_seed: int, chaos_report: list[Row]) -> None:
    """Two pilots killed mid-run: their running tasks are retried elsewhere after the lease,
    each lost attempt is on record, and every task finishes once."""
    n = 1000
    async with world(tmp_path, "kill-pilot", chaos_seed, chaos_report) as w:
        await standard(w)
        points = sorted([w.rng.randint(n // 8, n * 3 // 8), w.rng.randint(n // 2, n * 3 // 4)])
        tasks = await w.submit(w.work(n))
        victims: list[tuple[str, float, set[int]]] = []
        for k, at in enumerate(points):
            await w.reach(at)
            alive = sorted(p for p in w.c.pilots if p.startswith(("p", "r"))
                           and w.c.pilots[p].proc.returncode is None)
            victim = w.rng.choice(alive)
            held = w.running_on({victim})
            t0 = time.time()
            w.c.pilots[victim].kill()
            w.row.faults.append(f"kill -9 pilot {victim} at {at}")
            victims.append((victim, t0, held))
            await w.start_pilot(f"r{k}")  # the capacity comes back under another name
        await w.settle(tasks)
        for victim, t0, _held in victims:
            lost = w.losses({victim}, t0)
            w.row.detect.append(min(e.time for e in lost) - t0 if lost else None)
            redone = {e.task_id for e in lost}
            w.row.recover.append(max(w.finished_at(redone)) - t0 if redone else None)
        v = w.verdict(tasks)
        final = {int(r[0]): (str(r[1]), int(r[2])) for r in w.rows(
            "SELECT id, pilot, attempt FROM tasks")}
    assert v.states["JOB_FINISHED"] == n
    for victim, t0, held in victims:
        retried = {e.task_id for e in w.losses({victim}, t0)}
        # What the store showed running on the victim just before it died was retried,
        # unless its result was already on the way (then the victim's result stands).
        for tid in held - retried:
            assert final[tid][0] == victim, f"task {tid} was on {victim}, ended {final[tid]}"
    assert_holds(v)


async def test_kill_agent(tmp_path: Path, chaos_seed: int, chaos_report: list[Row]) -> None:
    """The agent killed mid-run stays down for a while: its job's pilot works on; restarted,
    it adopts the job it had submitted instead of submitting another."""
    n = 800
    async with world(tmp_path, "kill-agent", chaos_seed, chaos_report) as w:
        await standard(w, direct=2)
        before = await w.job()
        kill_at = w.rng.randint(n // 8, n // 2)
        back_at = kill_at + w.rng.randint(50, 200)
        tasks = await w.submit(w.work(n))
        await w.reach(kill_at)
        assert w.agent is not None
        t0 = time.time()
        w.agent.kill()
        w.row.faults.append(f"kill -9 agent at {kill_at}, restarted at {back_at}")
        await w.reach(back_at)
        await w.start_agent()
        await w.c.controller.wait_for("agent of site hpc connected (1 live", count=1)  # type: ignore[union-attr]
        w.row.detect.append(None)  # nothing to detect: the pilots do not depend on the agent
        w.row.recover.append(time.time() - t0)
        await w.settle(tasks)
        after = await w.job()
        v = w.verdict(tasks)
        jobs = await w.client.queue(include_finished=True)
    assert_holds(v)
    assert v.states["JOB_FINISHED"] == n and v.retried == 0
    # Adopted: the same job, same scheduler id, still running with its pilot; no new job.
    assert [j.id for j in jobs] == [before.id]
    assert (after.state, after.scheduler_id, after.pilots) == ("running", before.scheduler_id, 1)


@pytest.mark.usefixtures("store")
async def test_kill_controller(tmp_path: Path, chaos_seed: int,
                               chaos_report: list[Row]) -> None:
    """kill -9 of the controller, restarted on the same store: pilots and agent reconnect,
    what ran is adopted, nothing is lost or run twice unseen."""
    n = 1000
    async with world(tmp_path, "kill-controller", chaos_seed, chaos_report) as w:
        pilots = await standard(w)
        at = w.rng.randint(n // 4, n * 3 // 4)
        tasks = await w.submit(w.work(n))
        await w.reach(at)
        ctl = w.c.controller
        assert ctl is not None
        t0 = time.time()
        ctl.kill()
        w.row.faults.append(f"kill -9 controller at {at}")
        await w.c.pilots["p0"].wait_for("lost the controller")
        w.row.detect.append(time.time() - t0)
        await ctl.proc.wait()
        await w.c.start_controller()
        restarted = time.time()
        # every pilot (the batch job's too) and the agent come back
        with anyio.fail_after(LEASE * 5):
            for p in pilots:
                if p in w.c.pilots:
                    await w.c.pilots[p].wait_for(f"pilot {p} connected", count=2)
            await w.c.controller.wait_for("agent of site hpc connected")  # type: ignore[union-attr]
        await w.settle(tasks)
        after = [t for t in w.finished_at({t.id for t in tasks}) if t > restarted]
        w.row.recover.append(min(after) - t0 if after else None)
        v = w.verdict(tasks)
    assert_holds(v)
    assert v.states["JOB_FINISHED"] == n
