"""globus:// through the whole system: controller, site agent, pilot, and a local
service speaking the Globus Transfer API (tests/fakes/globus_service.py).

Also shows a stage of several items progressing: while the Globus task is
held ACTIVE, the file:// input of the same task is already reported done.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from tidewater.agents.settings import write_token
from tidewater.urls import digest

from ..fakes.globus_service import GlobusService
from .procs import until
from .test_data import data_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

TOKEN = "fake-transfer-token"
SITE = "5e7e5d1a-0000-4000-8000-00000000517e"
REMOTE = "8e40e7e0-0000-4000-8000-0000000be40e"


async def test_globus_inputs_and_outputs_with_progress_while_a_task_is_held(
    tmp_path: Path,
) -> None:
    site_dir = tmp_path / "site"  # data_site's site directory
    remote = tmp_path / "remote-collection"
    (remote / "run42" / "frames").mkdir(parents=True)
    frames = {f"f{i}.raw": os.urandom(50_000) for i in range(4)}
    for name, data in frames.items():
        (remote / "run42" / "frames" / name).write_bytes(data)
    local = tmp_path / "dark.bin"
    local.write_bytes(os.urandom(10_000))
    token_file = tmp_path / "globus-token"
    write_token(token_file, TOKEN)
    # The site's collection shows the site directory; the work root is its work/.
    endpoints = {SITE: site_dir, REMOTE: remote}
    async with GlobusService(endpoints, token=TOKEN) as svc, data_site(
        tmp_path, globus_endpoint=SITE, globus_work_root="/work",
        globus_token_file=str(token_file), globus_base_url=svc.url, globus_poll_interval=0.05,
    ) as (_c, client, _work):
        svc.gate = anyio.Event()  # Globus tasks stay ACTIVE until the gate opens
        t = await client.submit(
            "sh", site="lab",
            params={"script": "mkdir out; cat frames/* dark.bin > out/all.bin"},
            inputs={"frames": f"globus://{REMOTE}/run42/frames",
                    "dark.bin": local.as_uri()},
            outputs={"out": f"globus://{REMOTE}/run42/reduced"})

        async def file_item_done() -> bool:
            (info,) = await client.tasks(ids=[t.id])
            return any(f.path == "dark.bin" and f.state == "done" for f in info.files)

        await until(file_item_done, what="the file:// input to be reported on its own")
        (info,) = await client.tasks(ids=[t.id])
        files = {f.path: f for f in info.files if f.direction == "in"}
        assert info.state == "READY" and files["frames"].state == "pending"
        await svc.wait_for_tasks(1)
        svc.gate.set()
        info = await t.result(timeout=60)
        assert info.state == "JOB_FINISHED", info

    expected = b"".join(frames[n] for n in sorted(frames)) + local.read_bytes()
    assert (remote / "run42" / "reduced" / "all.bin").read_bytes() == expected
    files = {(f.direction, f.path): f for f in info.files}
    assert files["in", "frames"].sha256 == digest(remote / "run42" / "frames").sha256
    assert files["out", "out"].sha256 == digest(remote / "run42" / "reduced").sha256
