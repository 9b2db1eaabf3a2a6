"""Task dependencies: a child waits in AWAITING_PARENTS, runs when its last parent finishes
(in that parent's commit), and fails or is killed with a failed or killed parent."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import TaskSpec

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


async def test_diamond_runs_in_dependency_order(tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "step", "sh -c {script}")
            await c.start_pilot(site_token, pilot_id="p1", cores=2)

            def step(name: str) -> dict[str, str]:
                return {"script": f"sleep 0.2; echo {name} >> {log}"}

            a = await client.submit("step", site="hpc", params=step("a"))
            b = await client.submit("step", site="hpc", params=step("b"), parents=[a])
            cc = await client.submit("step", site="hpc", params=step("c"), parents=[a])
            d = await client.submit("step", site="hpc", params=step("d"), parents=[b, cc])
            assert (await d.info()).state == "AWAITING_PARENTS"
            infos = await client.wait([a, b, cc, d])
            assert [i.state for i in infos] == ["JOB_FINISHED"] * 4
            order = log.read_text().split()
            assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]
            ia, ib, ic, idd = infos
            assert ib.started_at and ia.finished_at and ib.started_at >= ia.finished_at
            assert idd.started_at and ib.finished_at and ic.finished_at
            assert idd.started_at >= max(ib.finished_at, ic.finished_at)
            # The child became READY with its last parent's finish (same commit, same time).
            def when(task_id: int, state: str) -> float:
                ((t,),) = c.rows("SELECT time FROM events WHERE task_id = ? AND to_state = ?",
                                 (task_id, state))
                return float(t)  # type: ignore[arg-type]

            assert when(d.id, "READY") == max(when(b.id, "JOB_FINISHED"),
                                              when(cc.id, "JOB_FINISHED"))


async def test_fan_out_and_fan_in_of_a_thousand_tasks(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "true", "/bin/true")
            await client.add_app("hpc", "count", "echo {n}")
            await c.start_pilot(site_token, pilot_id="p1", cores=1, prefetch=4)
            await c.start_pilot(site_token, pilot_id="p2", cores=1, prefetch=4)
            root = await client.submit("true", site="hpc")
            fan = await client.submit_many(
                [TaskSpec(app="true", site="hpc", parents=[root.id]) for _ in range(1000)])
            sink = await client.submit("count", site="hpc", params={"n": "all done"},
                                       parents=fan)
            with anyio.fail_after(120):
                info = await sink.result()
            assert info.state == "JOB_FINISHED" and info.stdout_tail == "all done\n"
            finished = c.rows("SELECT count(*) FROM tasks WHERE state = 'JOB_FINISHED'")
            assert finished == [(1002,)]
            (first_child_start,) = c.rows("SELECT min(started_at) FROM tasks WHERE id > ? AND "
                                          "id < ?", (root.id, sink.id))[0]
            root_info = await root.info()
            assert root_info.finished_at and first_child_start >= root_info.finished_at


async def test_failed_and_killed_parents_propagate_down_the_graph(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "sh", "sh -c {script}")
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
            bad = await client.submit("sh", site="hpc", params={"script": "exit 3"},
                                      max_retries=0)
            child = await client.submit("sh", site="hpc", params={"script": "echo no"},
                                        parents=[bad])
            grandchild = await client.submit("sh", site="hpc", params={"script": "echo no"},
                                             parents=[child])
            infos = await client.wait([bad, child, grandchild])
            assert [i.state for i in infos] == ["FAILED"] * 3
            assert infos[1].error == f"parent task {bad.id} failed"
            assert infos[2].error == f"parent task {child.id} failed"
            assert infos[1].started_at is None and infos[2].started_at is None

            slow = await client.submit("sh", site="hpc", params={"script": "sleep 30"})
            kid = await client.submit("sh", site="hpc", params={"script": "echo no"},
                                      parents=[slow])
            await client.cancel([slow.id])
            info = await kid.result()
            assert (info.state, info.error) == ("KILLED", f"parent task {slow.id} was killed")

            # Parents that ended before the child was submitted count just the same.
            late = await client.submit("sh", site="hpc", params={"script": "echo x"},
                                       parents=[bad])
            assert (await late.result()).state == "FAILED"
            ok = await client.submit("sh", site="hpc", params={"script": "true"})
            await ok.result()
            after = await client.submit("sh", site="hpc", params={"script": "echo ran"},
                                        parents=[ok])
            assert (await after.result()).stdout_tail == "ran\n"


async def test_unknown_or_foreign_parents_are_refused_and_nothing_is_stored(
    tmp_path: Path
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        alice_token = await c.add_user("alice")
        bob_token = await c.add_user("bob")
        async with tidewater.connect(c.url, token=alice_token) as alice, \
                tidewater.connect(c.url, token=bob_token) as bob:
            await alice.add_site("hpc")
            await alice.add_app("hpc", "true", "/bin/true")
            await bob.add_site("b")
            await bob.add_app("b", "true", "/bin/true")
            mine = await alice.submit("true", site="hpc")
            before = c.snapshot()
            with pytest.raises(tidewater.NotFound, match="parent task 999 not found"):
                await alice.submit("true", site="hpc", parents=[999])
            with pytest.raises(tidewater.NotFound, match=f"parent task {mine.id} not found"):
                await bob.submit("true", site="b", parents=[mine.id])
            assert c.snapshot() == before


@pytest.mark.chaos
async def test_waiting_children_survive_a_controller_crash(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        ctl = await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "sh", "sh -c {script}")
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
            parent = await client.submit("sh", site="hpc", params={"script": "sleep 1"})
            child = await client.submit("sh", site="hpc", params={"script": "echo child"},
                                        parents=[parent])
            ctl.kill()
            await ctl.proc.wait()
            await c.start_controller()
            with anyio.fail_after(30):
                info = await child.result()
            assert (info.state, info.stdout_tail) == ("JOB_FINISHED", "child\n")
