"""Latency accounting end to end: a controller, two sites with a pilot each, tasks
with a known sleep and inline inputs/outputs; their phases through the API, the
reports through the command line, the plots as real PNG and SVG files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

import tidewater

from .procs import cluster
from .test_cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

SLEEP = 0.3
SITES = ("theta", "cori")


async def test_phases_and_reports(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            for i, name in enumerate(SITES):
                _site, site_token = await client.add_site(name)
                await client.add_app(name, "sh", "sh -c {script}")
                await c.start_pilot(site_token, pilot_id=f"p{i}", cores=2)
            tasks = []
            for name in SITES:
                for n in range(2):
                    tasks.append(await client.submit(
                        "sh", site=name, params={"script": f"sleep {SLEEP}; cat in.txt > out.txt"},
                        inputs={"in.txt": b"frame"}, outputs=["out.txt"],
                        tags={"test": "latency", "instrument": "aps" if n else "als"}))
            infos = await client.wait(tasks, timeout=60, check=True)
            assert len(infos) == 4

            rows = await client.phases(tags={"test": "latency"})
            assert sorted(r.id for r in rows) == sorted(t.id for t in tasks)
            for r in rows:
                assert r.state == "JOB_FINISHED"
                assert r.site in SITES
                assert r.run is not None and r.run >= SLEEP
                assert r.total is not None and r.total >= r.run
                assert r.stage_in is not None and r.run_delay is not None
                assert r.stage_out is not None
                assert r.attempts == 1 and len(r.runs) == 1
                parts = (r.parents, r.stage_in, r.run_delay, r.run, r.stage_out)
                assert sum(x or 0.0 for x in parts) == pytest.approx(r.total)
            # Paging gives the same tasks; a site filter only that site's.
            assert [r.id for r in await client.phases(tags={"test": "latency"}, limit=3)] == [
                r.id for r in rows][:3]
            assert {r.site for r in await client.phases(site="cori")} == {"cori"}
            with pytest.raises(tidewater.NotFound):
                await client.phases(site="nowhere")
            now = time.time()
            assert await client.phases(since=now + 60) == []
            assert len(await client.phases(since=now - 600, until=now + 60)) == 4

            table = await client.latency_report(tags={"test": "latency"}, by_tag="instrument")
            assert [(r.site, r.tag, r.tasks) for r in table] == [
                ("cori", "als", 1), ("cori", "aps", 1), ("theta", "als", 1), ("theta", "aps", 1)]
            thr = await client.throughput_report(bin_seconds=1.0)
            assert set(thr) == set(SITES) and all(s[-1][1] == 2.0 for s in thr.values())
            util = await client.utilization_report(bin_seconds=0.5, unit="tasks")
            assert set(util) == set(SITES)
            # Each site ran two tasks of at least SLEEP s: that much task-time in its bins.
            for series in util.values():
                assert sum(v for _, v in series) * 0.5 >= 2 * SLEEP

        def sync_reports() -> tuple[int, list[str]]:
            with tidewater.connect_sync(c.url, token=token) as sync:
                return (len(sync.phases(tags={"test": "latency"})),
                        [r.site for r in sync.latency_report(tags={"test": "latency"})])

        assert await anyio.to_thread.run_sync(sync_reports) == (4, ["cori", "theta"])

        bob = await c.add_user("bob")
        async with tidewater.connect(c.url, token=bob) as other:
            assert await other.phases() == []

        _, out, _ = await run_cli(c, "report", "latency", "--tag", "test=latency", "--last", "3600",
                                  token=token)
        for name in SITES:
            assert name in out
        assert "run delay" in out and "stage out" in out
        _, out, _ = await run_cli(c, "report", "latency", "--by-tag", "instrument", "--json",
                                  token=token)
        routes = json.loads(out)
        assert {(r["site"], r["tag"]) for r in routes} == {
            (s, t) for s in SITES for t in ("als", "aps")}
        assert all(r["run"] >= SLEEP for r in routes)

        png = tmp_path / "throughput.png"
        _, out, _ = await run_cli(c, "report", "throughput", "--bin", "1", "--plot", str(png),
                                  token=token)
        assert all(name in out for name in SITES)
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        svg = tmp_path / "utilization.svg"
        _, out, _ = await run_cli(c, "report", "utilization", "--bin", "0.5", "--plot", str(svg),
                                  "--json", token=token)
        assert set(json.loads(out)) == set(SITES)
        text = await anyio.Path(svg).read_text()
        assert "<svg" in text and text.rstrip().endswith("</svg>")
        code, _, err = await run_cli(c, "report", "throughput", "--plot", str(tmp_path / "x.gif"),
                                     token=token, check=False)
        assert code == 1 and ".png or .svg" in err
