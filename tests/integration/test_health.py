"""Health that tells the truth, through real processes: a site with nothing connected is
down and a submit to it says so; a site whose agent died while its pilots live is degraded;
a wait on a down site says what it waits for instead of hanging silently."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater.config import Timeouts
from tidewater.progress import Notice

from .procs import PY, Cluster, cluster, until, write_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


async def cli(c: Cluster, token: str, *args: str) -> tuple[int, str, str]:
    r = await anyio.run_process([PY, "-m", "tidewater", *args],
                                env={**c.env, "TIDEWATER_TOKEN": token,
                                     "TIDEWATER_PROGRESS_INTERVAL": "0.5"}, check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


async def health(c: Cluster, token: str) -> dict[str, dict[str, object]]:
    code, out, err = await cli(c, token, "site", "ls", "--json")
    assert code == 0, err
    return {s["name"]: s for s in json.loads(out)}


async def test_a_site_with_nothing_connected_is_down_and_says_so(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("aps")
            await client.add_app("aps", "hello", "echo hello")

        sites = await health(c, token)
        assert sites["aps"]["health"] == "down"
        assert "no agent and no pilot connected" in str(sites["aps"]["health_reason"])

        # The submit succeeds (the task is stored) but warns, and exits 0.
        code, out, err = await cli(c, token, "submit", "--site", "aps", "hello")
        assert code == 0 and out.strip().isdigit()
        assert "site aps has no agent and no pilot connected: tasks will wait" in err

        # A wait on it says what it is waiting for, every progress interval, through the API.
        notices: list[Notice] = []
        async with tidewater.connect(c.url, token=token, on_notice=notices.append,
                                     timeouts=Timeouts(progress=0.3)) as client:
            task = await client.submit("hello", site="aps")
            assert notices[0] == Notice(
                "site aps has no agent and no pilot connected: tasks will wait", True)
            with anyio.move_on_after(2):
                await task.result()
            waits = [n for n in notices[1:] if n.text.startswith("still waiting")]
            assert waits and all(n.trouble for n in waits)
            assert "1 STAGED_IN on site aps -- site aps is down" in waits[0].text

            # A pilot comes: the site is up, both tasks run, nothing more is said.
            await c.start_pilot(site_token, pilot_id="p1")
            info = await task.result(timeout=30)
            assert info.state == "JOB_FINISHED"
        sites = await health(c, token)
        assert sites["aps"]["health"] == "up" and sites["aps"]["pilots"] == 1
        (p,) = sites["aps"]["pilot_list"]  # type: ignore[misc]
        assert p["pilot_id"] == "p1" and p["connected"] and p["last_seen"] > 0


async def test_a_site_whose_agent_died_under_live_pilots_is_degraded(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "hello", "echo hello")
            site_dir = write_site(tmp_path / "site", name="hpc", scheduler="local", url=c.url,
                                  token=site_token)
            agent = await c.start_agent(site_dir)
            await c.start_pilot(site_token, pilot_id="p1")
            assert (await health(c, token))["hpc"]["health"] == "up"

            agent.kill()
            await agent.proc.wait()
            seen: dict[str, dict[str, object]] = {}

            async def degraded() -> bool:
                seen.update(await health(c, token))
                return seen["hpc"]["health"] == "degraded"

            # The controller notices the closed connection at once.
            await until(degraded, timeout=20, what="the site to show as degraded")
            h = seen
            assert "agent gone" in str(h["hpc"]["health_reason"])
            assert "1 pilot connected" in str(h["hpc"]["health_reason"])

            # Degraded still runs tasks; the submit says what is missing.
            code, out, err = await cli(c, token, "submit", "--site", "hpc", "hello", "--wait")
            assert code == 0 and "JOB_FINISHED" in out
            assert "site hpc has lost its agent" in err

            _, out, _ = await cli(c, token, "site", "ls", "--pilots")
            assert "degraded" in out and "p1" in out
