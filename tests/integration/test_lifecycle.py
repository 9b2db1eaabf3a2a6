"""A task's life after it ended, end to end: retry, resubmit, its events, its logs.

A real controller, a local site with its agent and one running batch job of
real pilots (:func:`.test_data.data_site`), Alice's library client.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater.client import Client
from tidewater.progress import Notice

from .test_cli import run_cli
from .test_data import data_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]


def needs(path: Path) -> dict[str, str]:
    """A script that fails (exit 1) until ``path`` exists, then prints it."""
    return {"script": f"cat {path}"}


async def failed(client: Client, params: dict[str, str], **kw: object) -> tidewater.Task:
    t = await client.submit("sh", site="lab", params=params, max_retries=0, **kw)  # type: ignore[arg-type]
    info = await t.result(timeout=60)
    assert info.state == "FAILED" and info.attempt == 1, info
    return t


async def test_a_failed_task_retried_after_its_input_is_fixed_succeeds_under_its_id(
    tmp_path: Path,
) -> None:
    data = tmp_path / "input.txt"
    async with data_site(tmp_path) as (_c, client, _work):
        t = await failed(client, needs(data))
        assert t.done()
        data.write_text("fixed\n")
        assert await client.retry([t]) == [t.id]
        assert not t.done()  # final no more: result() waits for the new attempt
        info = await t.result(timeout=60)
        assert info.id == t.id and info.state == "JOB_FINISHED" and t.done()
        assert info.attempt == 2 and info.error == "" and info.stdout_tail == "fixed\n"
        trail = [(e.from_state, e.to_state, e.data.get("retry"))
                 for e in await client.events(t)]
        assert ("RUN_ERROR", "FAILED", None) in trail
        back = trail.index(("FAILED", "RESTART_READY", "user"))
        assert trail[back + 1][:2] == ("RESTART_READY", "RUNNING")
        assert trail[-1][1] == "JOB_FINISHED"
        # The whole trail is the one the state machine and the retry table allow.
        assert [e.id for e in await client.events(t, limit=3)] == [
            e.id for e in await client.events(t)][:3]


async def test_retry_by_tag_retries_only_the_failed_tasks_with_the_tag(tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    async with data_site(tmp_path) as (_c, client, _work):
        a = await failed(client, needs(data), tags={"run": "7"})
        b = await failed(client, needs(data), tags={"run": "7"})
        other = await failed(client, needs(data), tags={"run": "8"})
        ok = await client.submit("sh", site="lab", params={"script": "true"},
                                 tags={"run": "7"})
        assert (await ok.result(timeout=60)).state == "JOB_FINISHED"
        data.write_text("x\n")
        assert await client.retry(tags={"run": "7"}) == [a.id, b.id]
        infos = await client.wait([a, b], timeout=60)
        assert [(i.state, i.attempt) for i in infos] == [("JOB_FINISHED", 2)] * 2
        (still,) = await client.tasks(ids=[other.id])
        assert still.state == "FAILED" and still.attempt == 1
        assert await client.retry(tags={"run": "7"}) == []  # nothing failed is left
        with pytest.raises(tidewater.InvalidRequest, match="tasks or filters"):
            await client.retry([other], tags={"run": "8"})


async def test_retry_leaves_finished_and_cancelled_tasks_alone(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (c, client, _work):
        ok = await client.submit("sh", site="lab", params={"script": "echo done"})
        assert (await ok.result(timeout=60)).state == "JOB_FINISHED"
        gone = await client.submit("sh", site="lab", params={"script": "exec sleep 60"})
        await client.cancel([gone])
        assert (await gone.result(timeout=60)).state == "KILLED"
        before = c.snapshot()
        assert await client.retry([ok, gone]) == []
        assert await client.retry(state="JOB_FINISHED") == []
        assert c.snapshot() == before
        (info,) = await client.tasks(ids=[ok.id])
        assert info.state == "JOB_FINISHED" and info.attempt == 1


async def test_a_retried_parent_brings_back_the_children_it_failed(tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    async with data_site(tmp_path) as (_c, client, _work):
        parent = await client.submit("sh", site="lab", params=needs(data), max_retries=0)
        child = await client.submit("sh", site="lab", params={"script": "echo child"},
                                    parents=[parent])
        grandchild = await client.submit("sh", site="lab", params={"script": "echo gc"},
                                         parents=[child])
        infos = await client.wait([parent, child, grandchild], timeout=60)
        assert [i.state for i in infos] == ["FAILED"] * 3
        assert infos[1].error == f"parent task {parent.id} failed"
        assert infos[2].parents == [child.id]
        data.write_text("x\n")
        assert await client.retry([parent]) == [parent.id, child.id, grandchild.id]
        infos = await client.wait([parent, child, grandchild], timeout=60)
        assert [i.state for i in infos] == ["JOB_FINISHED"] * 3
        assert [i.attempt for i in infos] == [2, 1, 1]  # the children had never run
        trail = [(e.from_state, e.to_state) for e in await client.events(grandchild)]
        assert ("FAILED", "AWAITING_PARENTS") in trail


async def test_bob_cannot_retry_or_resubmit_alices_task(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (c, client, _work):
        t = await failed(client, {"script": "exit 3"})
        bob = await c.add_user("bob")
        async with tidewater.connect(c.url, token=bob) as b:
            before = c.snapshot()
            with pytest.raises(tidewater.NotFound, match=f"no task with id {t.id}"):
                await b.retry([t.id])
            with pytest.raises(tidewater.NotFound):
                await b.resubmit([t.id])
            with pytest.raises(tidewater.NotFound):
                await b.events(t.id)
            with pytest.raises(tidewater.NotFound):
                await b.logs(t.id)
            assert await b.retry(state="FAILED") == []
            assert c.snapshot() == before
        (info,) = await client.tasks(ids=[t.id])
        assert info.state == "FAILED"


async def test_resubmit_makes_a_new_task_with_the_same_spec(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        t = await client.submit("sh", site="lab", params={"script": "echo again"},
                                tags={"run": "1"}, inputs={"in.txt": b"inline"},
                                outputs=["in.txt"], max_retries=1)
        assert (await t.result(timeout=60)).state == "JOB_FINISHED"
        (copy,) = await client.resubmit([t])
        assert copy.id > t.id
        info = await copy.result(timeout=60)
        assert info.state == "JOB_FINISHED" and info.attempt == 1
        assert info.params == {"script": "echo again"} and info.tags == {"run": "1"}
        assert info.max_retries == 1
        assert await copy.output("in.txt") == b"inline"


async def test_events_page_through_the_trail_and_the_filters(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        ts = [await client.submit("sh", site="lab", params={"script": "true"},
                                  tags={"k": str(i % 2)}) for i in range(3)]
        await client.wait(ts, timeout=60)
        every = await client.events(tags={"k": "0"})
        assert {e.task_id for e in every} == {ts[0].id, ts[2].id}
        assert [e.id for e in every] == sorted(e.id for e in every)
        page = await client.events(tags={"k": "0"}, limit=2)
        rest = await client.events(tags={"k": "0"}, since_event=page[-1].id)
        assert [e.id for e in page + rest] == [e.id for e in every]
        finished = await client.events(state="JOB_FINISHED")
        assert sorted(e.task_id for e in finished) == [t.id for t in ts]
        created = (await ts[1].info()).created_at
        listed = await client.tasks(since=created, until=created + 1e-6)
        assert [i.id for i in listed] == [ts[1].id]
        assert [i.id for i in await client.tasks(until=created)] == [ts[0].id]


async def test_logs_return_three_megabytes_of_stdout_byte_for_byte(tmp_path: Path) -> None:
    size = 3_000_000
    async with data_site(tmp_path) as (_c, client, work):
        t = await client.submit("sh", site="lab", params={
            "script": f"yes abcdefghi | head -c {size}; echo oops >&2"})
        assert (await t.result(timeout=60)).state == "JOB_FINISHED"
        out = await client.logs(t)
        assert out == (b"abcdefghi\n" * (size // 10 + 1))[:size]
        assert out == (work / f"tasks/{t.id}/stdout.txt").read_bytes()
        assert await client.logs(t, stderr=True) == b"oops\n"
        assert await client.logs(t, offset=size - 4) == b"ghi\n"[-4:]


async def test_logs_of_a_task_that_has_not_run_say_so(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with data_site(tmp_path) as (_c, client, _work):
        parent = await client.submit("sh", site="lab", params={
            "script": f"while [ ! -e {gate} ]; do sleep 0.05; done"})
        child = await client.submit("sh", site="lab", params={"script": "true"},
                                    parents=[parent])
        with pytest.raises(tidewater.InvalidRequest, match="has not run") as exc:
            await client.logs(child)
        assert exc.value.code == "not_ready"
        gate.touch()
        assert (await child.result(timeout=60)).state == "JOB_FINISHED"
        assert await client.logs(child) == b""


async def test_a_function_task_without_output_file_gives_its_tails(tmp_path: Path) -> None:
    notices: list[Notice] = []
    async with data_site(tmp_path) as (c, client, _work):
        await client.add_app("lab", "noop", function="tests.fnapps:noop")
        t = await client.submit("noop", site="lab")
        info = await t.result(timeout=60)
        assert info.state == "JOB_FINISHED"
        async with tidewater.connect(c.url, token=client.token,
                                     on_notice=notices.append) as quiet:
            assert await quiet.logs(t.id) == info.stdout_tail.encode()
    assert any("no stdout.txt" in n.text for n in notices), notices


async def test_follow_sees_lines_as_a_running_task_prints_them(tmp_path: Path) -> None:
    async with data_site(tmp_path) as (_c, client, _work):
        # The task prints a line, then waits for the test to have seen it.
        script = "; ".join(
            f"echo line{i}; while [ ! -e {tmp_path}/seen{i} ]; do sleep 0.02; done"
            for i in range(1, 4)) + "; echo end"
        t = await client.submit("sh", site="lab", params={"script": script})
        got = b""
        with anyio.fail_after(60):
            async for piece in client.follow_logs(t, interval=0.05):
                got += piece
                for i in range(1, 4):
                    if f"line{i}\n".encode() in got:
                        (tmp_path / f"seen{i}").touch()
        assert got == b"line1\nline2\nline3\nend\n"
        assert (await t.result(timeout=10)).state == "JOB_FINISHED"


async def test_the_retry_and_logs_commands(tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    async with data_site(tmp_path) as (c, client, _work):
        t = await failed(client, needs(data), tags={"run": "9"})
        ok = await client.submit("sh", site="lab", params={"script": "echo out; echo err >&2"})
        assert (await ok.result(timeout=60)).state == "JOB_FINISHED"
        token = client.token

        code, out, err = await run_cli(c, "retry", token=token, check=False)
        assert code == 1 and "name the tasks to retry" in err
        code, out, err = await run_cli(c, "retry", str(ok.id), token=token, check=False)
        assert code == 3 and out == f"{ok.id}\tnot failed: left alone\n"
        assert "no task was retried" in err
        code, out, err = await run_cli(c, "retry", "--tag", "run=1", token=token, check=False)
        assert (code, out) == (3, "")
        code, _out, err = await run_cli(c, "retry", "999999", token=token, check=False)
        assert code == 1 and "no task with id 999999" in err
        data.write_text("again\n")
        _code, out, _err = await run_cli(c, "retry", "--tag", "run=9", "--state", "FAILED",
                                         token=token)
        assert out == f"{t.id}\tretried\n"
        # This client saw the task FAILED and keeps that; a new one waits for the retry.
        assert t.done() and (await t.result()).attempt == 1
        async with tidewater.connect(c.url, token=token) as fresh:
            (info,) = await fresh.wait([t.id], timeout=60)
        assert (info.state, info.attempt) == ("JOB_FINISHED", 2)

        _code, out, _err = await run_cli(c, "logs", str(t.id), token=token)
        assert out == "again\n"
        _code, out, _err = await run_cli(c, "logs", str(ok.id), "--stderr", token=token)
        assert out == "err\n"
        _code, out, _err = await run_cli(c, "logs", str(ok.id), "--follow", token=token)
        assert out == "out\n"
        code, _out, err = await run_cli(c, "logs", "999999", token=token, check=False)
        assert code == 1 and "no task with id 999999" in err


async def test_the_sync_facade_retries_resubmits_and_reads_logs(tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    async with data_site(tmp_path) as (c, client, _work):
        token = client.token

        def notebook() -> tuple[list[int], list[str], bytes, list[bytes], list[str]]:
            with tidewater.connect_sync(c.url, token=token) as nb:
                t = nb.submit("sh", site="lab", params=needs(data), max_retries=0)
                first = t.result(timeout=60)
                seen = [first.state, str(t.done())]
                data.write_text("sync\n")
                back = nb.retry([t])
                seen += [str(t.done()), t.result(timeout=60).state]
                (copy,) = nb.resubmit([t])
                seen.append(copy.result(timeout=60).state)
                trail = [e.to_state for e in nb.events(t)]
                return back, seen, nb.logs(t), list(nb.follow_logs(copy)), trail

        back, seen, out, followed, trail = await anyio.to_thread.run_sync(notebook)
        assert seen == ["FAILED", "True", "False", "JOB_FINISHED", "JOB_FINISHED"]
        assert len(back) == 1 and out == b"sync\n" and b"".join(followed) == b"sync\n"
        assert trail.count("FAILED") == 1 and trail[-1] == "JOB_FINISHED"
