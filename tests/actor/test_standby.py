"""Two controllers in process on one SQLite file, and peers given both URLs.

The second controller waits for the file's leader lock without listening;
peers walk their URL list past the one that refuses, and when the leader
stops they follow the standby that takes over.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater.config import ControllerConfig, Timeouts
from tidewater.controller.app import Server
from tidewater.controller.users import add_user
from tidewater.pilot.main import Pilot, PilotConfig

from ..integration.procs import HEARTBEAT, LEASE, free_port, until

TIMEOUTS = Timeouts(heartbeat_interval=HEARTBEAT, lease_timeout=LEASE, leader_check=0.05)


async def test_peers_skip_a_standby_and_follow_it_once_it_leads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidewater")
    db = str(tmp_path / "tw.db")
    token = await add_user(db, "alice")
    leader = Server(ControllerConfig(db=db, port=free_port(), timeouts=TIMEOUTS))
    standby = Server(ControllerConfig(db=db, port=free_port(), timeouts=TIMEOUTS))
    # The standby first: it refuses connections, so every peer must move on to the leader.
    urls = f"ws://127.0.0.1:{standby.port},ws://127.0.0.1:{leader.port}"
    async with anyio.create_task_group() as tg:
        await tg.start(leader.run)
        tg.start_soon(standby.run)

        async def standing_by() -> bool:
            return "standby: waiting for the leader's lock on " + db in caplog.text

        await until(standing_by, what="the second controller to stand by")
        async with tidewater.connect(urls.split(","), token=token) as client:  # as a list
            _site, site_token = await client.add_site("laptop")
            await client.add_app("laptop", "greet", "echo hello {name}")
            pilot = Pilot(PilotConfig(url=urls, token=site_token, cores=1,
                                      workdir=str(tmp_path / "work"), pilot_id="inproc",
                                      timeouts=TIMEOUTS))
            await tg.start(pilot.run)
            first = await client.submit("greet", site="laptop", params={"name": "first"})
            assert (await first.result(timeout=30)).stdout_tail == "hello first\n"
            assert (pilot.session.url, standby.leading) == (
                f"ws://127.0.0.1:{leader.port}/ws", False)

            leader.stop()  # gracefully: the standby takes the lock once the store is closed
            again = await client.submit("greet", site="laptop", params={"name": "again"})
            info = await again.result(timeout=30)
            assert (info.state, info.stdout_tail, info.pilot) == (
                "JOB_FINISHED", "hello again\n", "inproc")
            assert standby.leading
            assert pilot.session.url == f"ws://127.0.0.1:{standby.port}/ws"
            with anyio.fail_after(30):
                await pilot.stop()
        tg.cancel_scope.cancel()
