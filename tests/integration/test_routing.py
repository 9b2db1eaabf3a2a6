"""Routing through real processes: a controller, two sites with a pilot each, tasks
submitted to ``site="any"`` run on both, and ``show`` says why each went where it went."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater.errors import InvalidRequest

from .procs import PY, Cluster, cluster, until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


async def cli(c: Cluster, token: str, *args: str) -> tuple[int, str, str]:
    r = await anyio.run_process([PY, "-m", "tidewater", *args],
                                env={**c.env, "TIDEWATER_TOKEN": token}, check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


async def test_tasks_submitted_to_any_run_on_both_sites_with_their_routes(
        tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            for name in ("east", "west"):
                _site, site_token = await client.add_site(name)
                await client.add_app(name, "hello", "echo hello")
                await c.start_pilot(site_token, pilot_id=f"p-{name}", cores=1)
            await client.add_site("empty")  # no app: never a candidate of "any"

            tasks = [await client.submit("hello", site="any") for _ in range(1)]
            tasks += await client.submit_many(
                [tidewater.TaskSpec(app="hello", site="any") for _ in range(3)])
            infos = [await t.result(timeout=30) for t in tasks]
            assert all(i.state == "JOB_FINISHED" for i in infos)
            listed = await client.tasks(ids=[t.id for t in tasks])
            assert {i.site for i in listed} == {"east", "west"}
            for i in listed:
                (route,) = i.routes
                assert route.policy == "earliest-start" and route.chosen == i.site
                assert {e.site for e in route.candidates} == {"east", "west"}

            # A list of sites and another policy.
            rr = [await client.submit("hello", site=["west", "east"], policy="round-robin")
                  for _ in range(2)]
            got = await client.tasks(ids=[t.id for t in rr])
            assert sorted(i.site for i in got) == ["east", "west"]
            assert all(i.routes[0].policy == "round-robin" for i in got)

            with pytest.raises(InvalidRequest, match="site 'empty' has no app 'hello'"):
                await client.submit("hello", site=["east", "empty"])
            with pytest.raises(InvalidRequest, match="unknown routing policy"):
                await client.submit("hello", site="any", policy="fastest")

        code, out, err = await cli(c, token, "show", str(tasks[0].id))
        assert code == 0, err
        assert f"routed to {listed[0].site} by earliest-start" in out
        assert "est. start" in out and "east" in out and "west" in out

        code, out, err = await cli(c, token, "submit", "--site", "east", "--site", "west",
                                   "--policy", "shortest-backlog", "hello", "--wait")
        assert code == 0, err
        assert "routed to" in out and "by shortest-backlog" in out


async def test_a_routed_task_whose_site_goes_down_before_it_starts_runs_elsewhere(
        tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            pilots = {}
            for name in ("east", "west"):
                _site, site_token = await client.add_site(name)
                await client.add_app(name, "nap", "sleep {s}")
                pilots[name] = await c.start_pilot(site_token, pilot_id=f"p-{name}", cores=1,
                                                   prefetch=0)
            busy = await client.submit("nap", site="east", params={"s": 60})

            async def running() -> bool:
                (i,) = await client.tasks(ids=[busy.id])
                return i.state == "RUNNING"

            await until(running, what="east's pilot to be busy")
            # Round-robin takes east first (by name), where the task queues behind the nap.
            task = await client.submit("nap", site=["east", "west"], policy="round-robin",
                                       params={"s": 0})
            (i,) = await client.tasks(ids=[task.id])
            assert i.site == "east" and i.state != "RUNNING"
            await pilots["east"].stop()  # east has no agent: it is down
            info = await task.result(timeout=30)
            assert info.state == "JOB_FINISHED" and info.site == "west"
            assert [r.chosen for r in info.routes] == ["east", "west"]
            assert info.routes[1].reason == "site east went down"
