"""Inputs and outputs end to end: controller, site agent, pilots in a local batch job.

A task's inputs arrive (file://, inline, a parent's output) before it runs;
its outputs come back inline, go to a URL, or stay on the site for
``download``. Failed transfers retry and then fail the task with the
backend's words; paths that lead out of the work directory are refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import Client
from tidewater.urls import digest

from .procs import Cluster, cluster, write_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

ROOT = Path(__file__).resolve().parents[2]
SITE_ENV = {"PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


@asynccontextmanager
async def data_site(
    tmp: Path, *, agent: bool = True, batch_job: bool = True, **transfers: object,
) -> AsyncIterator[tuple[Cluster, Client, Path]]:
    """A controller, a local site ``lab`` (app ``sh``) with its agent and one running batch
    job of 1 node; yields the cluster, Alice's client and the site's work root (its
    parent is the site directory). ``transfers``: the site's [transfers] settings."""
    async with cluster(tmp) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("lab")
            await client.add_app("lab", "sh", "sh -c {script}")
            site_dir = write_site(
                tmp / "site", name="lab", scheduler="local", url=c.url, token=site_token,
                sections={"scheduler": {"state_dir": str(tmp / "jobs")},
                          "site": {"cores_per_node": 2},
                          "transfers": {"retries": 2, "retry_delay": 0.05, **transfers}})
            if agent:
                await c.start_agent(site_dir, env=SITE_ENV)
            if batch_job:
                await client.queue_submit("lab", nodes=1, wall_time_min=10)
            yield c, client, site_dir / "work"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def states_of(client: Client, task_id: int) -> list[str]:
    return [e.to_state async for e in _events(client, task_id)]


async def _events(client: Client, task_id: int) -> AsyncIterator[tidewater.proto.TaskEvent]:
    async with client.watch(ids=[task_id], since_event=-1) as w:  # all of its history
        with anyio.fail_after(10):
            async for ev in w:
                yield ev
                if ev.to_state in ("JOB_FINISHED", "FAILED", "KILLED"):
                    return


async def test_inputs_arrive_before_the_run_and_outputs_go_everywhere(tmp_path: Path) -> None:
    src = tmp_path / "instrument"
    (src / "frames" / "sub").mkdir(parents=True)
    (src / "frames" / "empty").mkdir()
    frames = {f"frames/f{i}.raw": os.urandom(10_000 + i) for i in range(5)}
    frames["frames/sub/meta.json"] = b'{"energy": 12.4}'
    for rel, data in frames.items():
        (src / rel).write_bytes(data)
    big = os.urandom(3 * 1024 * 1024)
    (src / "dark.bin").write_bytes(big)
    dest = tmp_path / "results"
    # The task reads what arrived and writes: a small summary (inline), a 2.5 MB
    # file (too big to come back inline: it stays on the site) and a directory
    # sent to a file:// URL.
    script = (
        "set -e; test -d frames/empty; test -f config.json; "
        "sha256sum dark.bin frames/*.raw frames/sub/meta.json > summary.txt; "
        "head -c 2621440 dark.bin > reduced.bin; "
        "mkdir -p cake; cp frames/f0.raw cake/a; cat config.json > cake/cfg"
    )
    async with data_site(tmp_path) as (_c, client, _work):
        t = await client.submit(
            "sh", site="lab", params={"script": script},
            inputs={"frames": (src / "frames").as_uri(), "dark.bin": (src / "dark.bin").as_uri(),
                    "config.json": b'{"mask": true}'},
            outputs={"summary.txt": "", "reduced.bin": "", "cake": (dest / "cake").as_uri()},
        )
        info = await t.result(timeout=60)
        assert info.state == "JOB_FINISHED", info
        seen = await states_of(client, t.id)
        assert seen == ["READY", "STAGED_IN", "RUNNING", "RUN_DONE", "STAGED_OUT",
                        "JOB_FINISHED"]

        files = {(f.direction, f.path): f for f in info.files}
        assert files["in", "frames"].state == "done"
        assert files["in", "frames"].sha256 == digest(src / "frames").sha256
        assert files["in", "dark.bin"].sha256 == sha(big)
        assert files["in", "config.json"].state == "inline"
        assert files["out", "summary.txt"].state == "inline"
        assert files["out", "reduced.bin"].state == "on_site"
        assert files["out", "reduced.bin"].size == 2621440
        assert files["out", "reduced.bin"].sha256 == sha(big[:2621440])
        assert files["out", "cake"].state == "done"

        summary = await t.output("summary.txt")
        expected = {rel: sha(data) for rel, data in frames.items() if rel.endswith(
            (".raw", ".json"))}
        expected["dark.bin"] = sha(big)
        got = {line.split()[1]: line.split()[0] for line in summary.decode().splitlines()}
        assert got == expected

        # A 2.5 MB output kept on the site comes back through the agent, in pieces.
        path = await client.download(t, "reduced.bin", tmp_path)
        assert path == tmp_path / "reduced.bin"
        assert path.read_bytes() == big[:2621440]
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".tw-partial-")]

        assert (dest / "cake" / "a").read_bytes() == frames["frames/f0.raw"]
        assert (dest / "cake" / "cfg").read_bytes() == b'{"mask": true}'
        assert files["out", "cake"].sha256 == digest(dest / "cake").sha256


async def test_a_missing_input_retries_then_fails_the_task_with_the_reason(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere" / "frame.raw"
    async with data_site(tmp_path) as (_c, client, work):
        t = await client.submit("sh", site="lab", params={"script": "true"},
                                inputs={"frame.raw": missing.as_uri()})
        info = await t.result(timeout=30)
        assert info.state == "FAILED"
        assert str(missing) in info.error and "no such file" in info.error
        assert "after 3 attempts" in info.error
        (f,) = info.files
        assert f.state == "failed" and f.attempts == 3
        # It never ran, and nothing partial is left where the task would look.
        assert info.started_at is None
        assert not list(work.rglob(".tw-partial-*"))
        assert not (work / f"tasks/{t.id}/frame.raw").exists()


async def test_an_output_url_that_cannot_be_written_fails_the_task(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    async with data_site(tmp_path) as (_c, client, _work):
        t = await client.submit("sh", site="lab", params={"script": "echo hi > r.txt"},
                                outputs={"r.txt": (blocker / "r.txt").as_uri()})
        info = await t.result(timeout=30)
        assert info.state == "FAILED"
        assert "r.txt" in info.error and str(blocker) in info.error


async def test_a_child_uses_its_parents_outputs_by_reference(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        parent = await client.submit(
            "sh", site="lab",
            params={"script": "echo calibrated > cal.txt; head -c 2000000 /dev/urandom > big"},
            outputs=["cal.txt", "big"])
        child = await client.submit(
            "sh", site="lab",
            params={"script": "cat cal.txt > seen; sha256sum big | cut -c1-64 >> seen"},
            inputs={"cal.txt": (parent, "cal.txt"), "big": (parent, "big")},
            outputs=["seen"])
        info = await child.result(timeout=60)
        assert info.state == "JOB_FINISHED", info
        big = await parent.output("big")
        assert len(big) == 2_000_000
        assert (await child.output("seen")).decode().split() == ["calibrated", sha(big)]
        # The reference made the parent a parent.
        assert (await states_of(client, child.id))[0] == "AWAITING_PARENTS"


async def test_a_reference_to_an_output_the_parent_does_not_declare_is_refused(
    tmp_path: Path,
) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        parent = await client.submit("sh", site="lab", params={"script": "true"},
                                     outputs=["a.txt"])
        with pytest.raises(tidewater.InvalidRequest, match="has no output 'b.txt'"):
            await client.submit("sh", site="lab", params={"script": "true"},
                                inputs={"b.txt": (parent, "b.txt")})
        await parent.result(timeout=30)


async def test_an_output_the_task_did_not_write_fails_it(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        t = await client.submit("sh", site="lab", params={"script": "true"},
                                outputs=["result.h5"], max_retries=0)
        info = await t.result(timeout=30)
        assert info.state == "FAILED"
        assert "did not produce output 'result.h5'" in info.error


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "a/../../b", "~/x"])
async def test_destinations_outside_the_work_directory_are_refused_at_submit(
    tmp_path: Path, path: str,
) -> None:
    async with data_site(tmp_path) as (_c, client, work):
        for kwargs in ({"inputs": {path: b"x"}}, {"inputs": {path: "file:///etc/hosts"}},
                       {"outputs": [path]}, {"outputs": {path: "file:///tmp/x"}}):
            with pytest.raises(tidewater.InvalidRequest, match="relative|'\\.\\.'"):
                await client.submit("sh", site="lab", params={"script": "true"},
                                    **kwargs)  # type: ignore[arg-type]
        assert await client.tasks() == []
        assert not (work / "tasks").exists()


async def test_symbolic_links_do_not_lead_out_of_the_work_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep out")
    src = tmp_path / "frame.raw"
    src.write_bytes(b"frame")
    async with data_site(tmp_path) as (_c, client, work):
        # A work directory in which someone left a link pointing out.
        shared = work / "shared"
        shared.mkdir(parents=True)
        (shared / "link").symlink_to(outside)
        staged = await client.submit("sh", site="lab", params={"script": "true"},
                                     workdir="shared", inputs={"link/frame.raw": src.as_uri()})
        inline = await client.submit("sh", site="lab", params={"script": "true"},
                                     workdir="shared", inputs={"link/cfg": b"x"},
                                     max_retries=0)
        leaked = await client.submit("sh", site="lab", params={"script": "true"},
                                     workdir="shared", outputs=["link/secret"], max_retries=0)
        a, b, c = await client.wait([staged, inline, leaked], timeout=60)
        assert a.state == "FAILED" and "refused" in a.error and "leaves" in a.error
        assert b.state == "FAILED" and "refused" in b.error
        assert c.state == "FAILED" and "did not produce output 'link/secret'" in c.error
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        with pytest.raises(tidewater.InvalidRequest):
            await client.read_output(leaked, "link/secret")


async def test_inline_inputs_and_hooks_around_a_task(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        await client.add_app("lab", "hooked", "sh -c {script}", hooks=tidewater.proto.AppHooks(
            preprocess="tests.hookapps:pre", postprocess="tests.hookapps:post"))
        t = await client.submit("hooked", site="lab",
                                params={"script": "cat pre.txt in.txt > out.txt"},
                                inputs={"in.txt": b"payload\n"}, outputs=["out.txt"])
        out = await t.output("out.txt", timeout=60)
        assert out.decode() == f"pre {t.id} preprocess\npayload\npost 0\n"


async def test_an_error_handler_chooses_to_fail_and_postprocess_can_fail(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, work):
        await client.add_app("lab", "strict", "sh -c {script}", hooks=tidewater.proto.AppHooks(
            on_error="tests.hookapps:give_up", postprocess="tests.hookapps:post_fails"))
        failing = await client.submit("strict", site="lab",
                                      params={"script": "echo bad >&2; exit 3"}, max_retries=5)
        checked = await client.submit("strict", site="lab", params={"script": "true"},
                                      max_retries=0)
        f, c = await client.wait([failing, checked], timeout=60)
        # The handler said fail: no retries though five remained.
        assert f.state == "FAILED" and f.retries == 0 and "handler chose fail" in f.error
        assert (work / f"tasks/{failing.id}/handled-1").read_text() == "bad\n"
        assert c.state == "FAILED" and "postprocess found a bad result" in c.error


async def test_inline_data_beyond_one_frame_spreads_over_several(tmp_path: Path) -> None:
    """24 tasks with 700 kB in and 700 kB out each: 17 MB each way, two 8 MiB frames' worth."""
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("lab")
            await client.add_app("lab", "sh", "sh -c {script}")
            blobs = [os.urandom(700_000) for _ in range(24)]
            specs = [tidewater.proto.TaskSpec(
                app="sh", site="lab", params={"script": "cp in.bin out.bin"},
                inputs=[tidewater.proto.Input(path="in.bin", data=b)],
                outputs=[tidewater.proto.Output(path="out.bin")]) for b in blobs]
            tasks = await client.submit_many(specs)
            await c.start_pilot(site_token, pilot_id="wide", cores=24, prefetch=0)
            infos = await client.wait(tasks, timeout=60)
            assert [i.state for i in infos] == ["JOB_FINISHED"] * 24
            for t, b in zip(tasks, blobs, strict=True):
                assert await t.output("out.bin") == b


async def test_a_timeout_handler_retries_until_it_chooses_to_fail(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        await client.add_app("lab", "slow", "sh -c {script}", hooks=tidewater.proto.AppHooks(
            on_timeout="tests.hookapps:retry_unless_third"))
        t = await client.submit("slow", site="lab", params={"script": "exec sleep 60"},
                                timeout=0.3, max_retries=10)
        info = await t.result(timeout=60)
        # Attempts 1 and 2 timed out and the handler chose retry; at 3 it chose fail.
        assert info.state == "FAILED" and info.attempt == 3 and info.retries == 2
        assert "timed out" in info.error and "handler chose fail" in info.error


async def test_a_download_needs_the_sites_agent_and_works_again_when_it_is_back(
    tmp_path: Path,
) -> None:
    async with data_site(tmp_path) as (c, client, work):
        t = await client.submit("sh", site="lab",
                                params={"script": "head -c 1500000 /dev/urandom > big"},
                                outputs=["big"])
        assert (await t.result(timeout=60)).state == "JOB_FINISHED"
        agent = c.pilots["agent"]
        agent.kill()
        await agent.proc.wait()
        with pytest.raises(tidewater.InvalidRequest, match="agent is not connected"):
            await client.read_output(t, "big")
        await c.start_agent(work.parent, env=SITE_ENV)
        data = await client.read_output(t, "big")
        assert data == (work / f"tasks/{t.id}/big").read_bytes()
