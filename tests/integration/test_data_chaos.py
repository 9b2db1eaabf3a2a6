"""Transfers survive the loss of the controller and of the site's agent.

A task waiting for its inputs (READY) or for its outputs to leave (RUN_DONE)
is in the store; whichever process dies, the work is resumed when it is back,
and nothing acknowledged is lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from .procs import until
from .test_data import SITE_ENV, data_site

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.usefixtures("store")]


async def test_staging_resumes_after_the_controller_and_the_agent_died(tmp_path: Path) -> None:
    src = tmp_path / "frame.raw"
    src.write_bytes(os.urandom(100_000))
    dest = tmp_path / "results"
    async with data_site(tmp_path, agent=False, batch_job=False) as (c, client, work):
        ctl = c.controller
        assert ctl is not None
        site_dir = work.parent
        # No agent yet: the input cannot arrive, the task waits in READY.
        waiting = await client.submit(
            "sh", site="lab", params={"script": "cat frame.raw cfg > out.bin"},
            inputs={"frame.raw": src.as_uri(), "cfg": b"inline config"},
            outputs={"out.bin": (dest / "out.bin").as_uri()})
        assert (await waiting.info()).state == "READY"
        ctl.kill()
        await ctl.proc.wait()
        ctl = await c.start_controller()
        agent = await c.start_agent(site_dir, env=SITE_ENV)
        await client.queue_submit("lab", nodes=1, wall_time_min=10)
        info = await waiting.result(timeout=60)
        assert info.state == "JOB_FINISHED", info
        assert (dest / "out.bin").read_bytes() == src.read_bytes() + b"inline config"

        # Now the agent dies with the batch job still running: a task runs and
        # reaches RUN_DONE, its output waiting to leave; the controller dies too.
        agent.kill()
        await agent.proc.wait()
        late = await client.submit(
            "sh", site="lab", params={"script": "echo late > late.txt"},
            outputs={"late.txt": (dest / "late.txt").as_uri()})

        async def run_done() -> bool:
            return (await late.info()).state == "RUN_DONE"

        await until(run_done, what="the task to run and wait for its output to leave")
        ctl.kill()
        await ctl.proc.wait()
        await c.start_controller()
        assert (await late.info()).state == "RUN_DONE"
        await c.start_agent(site_dir, env=SITE_ENV)
        with anyio.fail_after(30):
            info = await late.result()
        assert info.state == "JOB_FINISHED", info
        assert (dest / "late.txt").read_text() == "late\n"
        (f,) = info.files
        assert f.state == "done" and f.size == 5
