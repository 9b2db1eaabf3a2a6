"""The optional uvloop event loop (TIDEWATER_EVENT_LOOP), with real processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import tidewater

from .procs import PY, cluster

pytestmark = pytest.mark.integration


async def test_a_controller_and_pilot_on_uvloop_run_tasks(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    async with cluster(tmp_path) as c:
        c.env["TIDEWATER_EVENT_LOOP"] = "uvloop"
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "greet", "echo hello {name}")
            await client.add_app("hpc", "noop", function="tidewater.examples.functions:noop")
            await c.start_pilot(site_token, pilot_id="p1")
            info = await (await client.submit("greet", site="hpc",
                                              params={"name": "uv"})).result(timeout=60)
            assert (info.state, info.stdout_tail) == ("JOB_FINISHED", "hello uv\n")
            assert await (await client.submit("noop", site="hpc", args=(5,))).value() == 5


def test_an_unknown_event_loop_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([PY, "-m", "tidewater", "server", "--db", str(tmp_path / "x.db")],
                          env={"TIDEWATER_EVENT_LOOP": "trio", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "TIDEWATER_EVENT_LOOP='trio': use asyncio or uvloop" in done.stderr
    assert not (tmp_path / "x.db").exists()
