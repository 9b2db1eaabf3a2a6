"""``tidewater top`` against a real controller and pilot: the numbers match the tasks run."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import anyio
import pytest

import tidewater

from .procs import PY, Cluster, cluster
from .test_cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def setup(c: Cluster) -> tuple[str, str]:
    """alice's token, and her site "laptop"'s token (site "far" has nothing connected)."""
    token = await c.add_user("alice")
    async with tidewater.connect(c.url, token=token) as cl:
        _, laptop = await cl.add_site("laptop")
        await cl.add_site("far")
        for site in ("laptop", "far"):
            await cl.add_app(site, "hello", "echo hello {name}")
            await cl.add_app(site, "fails", "/bin/false")
    return token, laptop


async def test_top_once_counts_tasks_sites_jobs_and_the_last_minute(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token, laptop = await setup(c)
        await c.start_pilot(laptop, pilot_id="top1", cores=2)
        async with tidewater.connect(c.url, token=token) as cl:
            ok = [await cl.submit("hello", site="laptop", params={"name": str(i)})
                  for i in range(4)]
            bad = await cl.submit("fails", site="laptop", max_retries=0)
            for _ in range(2):
                await cl.submit("hello", site="far", params={"name": "w"})
            await cl.queue_submit("far", nodes=1, wall_time_min=5)
            await cl.wait([*ok, bad])

        _, out, _ = await run_cli(c, "top", "--once", "--json", token=token)
        snap = json.loads(out)
        assert snap["tasks"] == {"total": 7, "by_state": {
            "STAGED_IN": 2, "JOB_FINISHED": 4, "FAILED": 1}}
        sites = {s["name"]: s for s in snap["sites"]}
        assert set(sites) == {"laptop", "far"}
        lap, far = sites["laptop"], sites["far"]
        assert lap["tasks"] == {"JOB_FINISHED": 4, "FAILED": 1} and lap["tasks_total"] == 5
        assert (lap["health"], lap["pilots"], lap["busy"], lap["free"]) == ("up", 1, 0, 2)
        assert lap["ended_last_minute"] == {"JOB_FINISHED": 4, "FAILED": 1}
        assert lap["pilot_seen"] > 0 and lap["jobs"] == {}
        assert far["tasks"] == {"STAGED_IN": 2} and far["ended_last_minute"] == {}
        assert (far["health"], far["pilots"], far["free"]) == ("down", 0, 0)
        assert far["reason"] and far["jobs"] == {"pending_submission": 1}
        assert snap["last_minute"]["ended"] == {"JOB_FINISHED": 4, "FAILED": 1}

        # The same frame for people.
        _, out, _ = await run_cli(c, "top", "--once", token=token)
        text = " ".join(out.split())
        assert "Tasks: 7 total · STAGED_IN 2 · JOB_FINISHED 4 · FAILED 1" in text
        assert "Last minute: 4 finished" in text
        rows = [[cell.strip() for cell in line.strip()[1:-1].split("│")]
                for line in out.splitlines() if line.startswith("│")]
        # Tasks by site: total and each state; then the sites' health, capacity and jobs.
        assert ["laptop", "5", "", "4", "1"] in rows and ["far", "2", "2", "", ""] in rows
        (lap_row,) = [r for r in rows if r[0] == "laptop" and len(r) == 10]
        assert lap_row[1] == "up" and lap_row[2].endswith("s ago")
        assert lap_row[3:9] == ["1", "0", "2", "-", "4", "1"]
        assert ["far", "down", "never", "0", "0", "0", "pending_submission 1", "0", "0",
                far["reason"]] in rows

        code, _, err = await run_cli(c, "top", "--json", token=token, check=False)
        assert code == 2 and "--json needs --once" in err


async def test_top_follows_pushed_events_between_refreshes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token, laptop = await setup(c)
        await c.start_pilot(laptop, pilot_id="top2", cores=2)
        async with tidewater.connect(c.url, token=token) as cl:
            await cl.wait([await cl.submit("hello", site="laptop", params={"name": "a"})])
            # Refreshes every 300 s: what changes on screen sooner came from the push.
            proc = await anyio.open_process(
                [PY, "-m", "tidewater", "top", "--interval", "300"],
                env={**c.env, "TIDEWATER_TOKEN": token, "TTY_COMPATIBLE": "1"})
            seen = ""

            async def until_shown(pattern: str) -> None:
                nonlocal seen
                assert proc.stdout is not None
                with anyio.fail_after(30):
                    while not re.search(pattern, seen):
                        seen += ANSI.sub("", (await proc.stdout.receive()).decode())

            try:
                await until_shown(r"Tasks: 1 total · JOB_FINISHED 1")
                more = [await cl.submit("hello", site="laptop", params={"name": str(i)})
                        for i in range(3)]
                await cl.wait(more)
                await until_shown(r"Tasks: 4 total · JOB_FINISHED 4")
                await until_shown(r"Last minute: 4 finished")
            finally:
                proc.send_signal(signal.SIGINT)
                with anyio.fail_after(10):
                    code = await proc.wait()
        assert code == 0
