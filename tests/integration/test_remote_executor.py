"""RemoteExecutor futures keep the concurrent.futures contract, on a real controller and a
real local pilot with warm workers; and the sync client's as_completed, sites and apps.

A running call is cancelled by killing its task: ``cancel()`` returns True only
once the controller has killed it, the task ends KILLED and the worker process
that ran it is gone. Nothing waits with a sleep: a call announces its worker's
pid through a named pipe, and the end of that process is awaited on its pidfd.
"""

from __future__ import annotations

import concurrent.futures
import os
import select
import time
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import RemoteFuture, TaskFailed
from tidewater.errors import AppError

from .procs import Cluster, cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

ROOT = Path(__file__).resolve().parents[2]
UNIT = 30.0  # seconds: far longer than anything here takes
LONG = 600  # a call that must be cancelled, never waited out


class Announcements:
    """A named pipe a call writes its worker's pid to (tests.fnapps:sleep_then_return)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def pid(self) -> int:
        """The pid the call announced (blocks until it has started, at most UNIT)."""
        deadline = time.monotonic() + UNIT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0, "the call never started"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                line += os.read(self.fd, 64)
        return int(line)

    def said_nothing(self) -> bool:
        ready, _, _ = select.select([self.fd], [], [], 0)
        return not ready or os.read(self.fd, 64) == b""

    def close(self) -> None:
        os.close(self.fd)


def gone(pid: int) -> bool:
    """Wait (at most UNIT) until process ``pid`` has exited; whether it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], UNIT)
        return bool(ready)
    finally:
        os.close(fd)


async def site_with_functions(c: Cluster, *, cores: int) -> str:
    """A controller, Alice's site ``hpc`` with the test functions and a pilot; her token."""
    c.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    await c.start_controller()
    token = await c.add_user("alice")
    async with tidewater.connect(c.url, token=token) as client:
        _site, site_token = await client.add_site("hpc")
        await client.add_app("hpc", "sleep", function="tests.fnapps:sleep_then_return")
        await client.add_app("hpc", "sqrt", function="tests.fnapps:sqrt")
        await client.add_app("hpc", "echo", "echo {word}")
        await client.add_app("hpc", "sh", "sh -c {script}")
    await c.start_pilot(site_token, pilot_id="p1", cores=cores)
    return token


async def test_cancel_kills_running_and_queued_calls_and_futures_keep_the_contract(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        token = await site_with_functions(c, cores=1)

        def scenario() -> None:
            first = Announcements(tmp_path / "first")
            queued = Announcements(tmp_path / "queued")
            later = Announcements(tmp_path / "later")
            with tidewater.connect_sync(c.url, token=token) as sync:
                ex = sync.executor(site="hpc", max_retries=0)
                running = ex.submit("sleep", LONG, first.path)
                assert isinstance(running, RemoteFuture)
                task = running.submitted(timeout=UNIT)
                assert running.task_id == task.id and running.task is task
                worker = first.pid()
                assert running.running() and not running.done()
                assert f"task={task.id} state=running" in repr(running)
                # Behind it on the one core: queued, never started.
                waiting = ex.submit("sleep", LONG, queued.path)
                waiting_task = waiting.submitted(timeout=UNIT)

                # A queued call: killed on the controller, never run.
                assert waiting.cancel() is True
                assert waiting.cancelled() and waiting.done() and not waiting.running()
                assert waiting_task.result(timeout=UNIT).state == "KILLED"

                # The running call: the controller kills it; the task ends KILLED and
                # the worker process that ran it is gone.
                assert running.cancel() is True
                assert running.cancelled() and not running.running()
                with pytest.raises(concurrent.futures.CancelledError):
                    running.result(timeout=UNIT)
                info = task.result(timeout=UNIT)
                assert info.state == "KILLED" and info.exception is None
                assert gone(worker)
                assert running.cancel() is True  # cancelled stays cancelled
                assert queued.said_nothing()

                # A finished call cannot be cancelled; concurrent.futures' as_completed
                # and wait take the executor's futures, cancelled ones included.
                roots = [ex.submit("sqrt", float(x)) for x in (1, 4, 9)]
                bad = ex.submit("sqrt", -1.0)
                done = {f: f for f in concurrent.futures.as_completed(
                    [*roots, bad, running], timeout=UNIT)}
                assert len(done) == 5
                assert [f.result() for f in roots] == [1.0, 2.0, 3.0]
                assert all(isinstance(f.task_id, int) for f in roots)
                assert len({f.task_id for f in roots}) == 3
                assert not any(f.cancel() for f in roots)
                assert not any(f.cancelled() for f in roots)
                err = bad.exception()
                assert isinstance(err, ValueError) and isinstance(err, TaskFailed)
                assert err.task_id == bad.task_id
                finished, not_done = concurrent.futures.wait(roots, timeout=UNIT)
                assert finished == set(roots) and not not_done

                # A submission the controller refuses surfaces on its future.
                refused = ex.submit("no_such_app", 1)
                assert isinstance(refused.exception(timeout=UNIT), AppError)
                assert "unknown app 'no_such_app'" in str(refused.exception())
                assert refused.task_id is None and refused.cancel() is False
                with pytest.raises(AppError):
                    refused.submitted(timeout=UNIT)

                # shutdown(cancel_futures=True) kills the running call and the queued one.
                busy = ex.submit("sleep", LONG, later.path)
                busy_task = busy.submitted(timeout=UNIT)
                busy_worker = later.pid()
                behind = ex.submit("sleep", LONG, str(tmp_path / "never"))
                behind_task = behind.submitted(timeout=UNIT)
                ex.shutdown(wait=True, cancel_futures=True)
                assert busy.cancelled() and behind.cancelled()
                assert busy_task.result(timeout=UNIT).state == "KILLED"
                assert behind_task.result(timeout=UNIT).state == "KILLED"
                assert gone(busy_worker)
                assert not (tmp_path / "never").exists()
                with pytest.raises(RuntimeError, match="after shutdown"):
                    ex.submit("sqrt", 1.0)
            for pipe in (first, queued, later):
                pipe.close()

        await anyio.to_thread.run_sync(scenario)


async def test_sync_client_as_completed_sites_and_apps(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        token = await site_with_functions(c, cores=2)

        def scenario() -> None:
            with tidewater.connect_sync(c.url, token=token) as sync:
                assert [s.name for s in sync.sites()] == ["hpc"]
                names = ["echo", "sh", "sleep", "sqrt"]
                assert sorted(a.name for a in sync.apps("hpc")) == names
                assert sorted(a.name for a in sync.apps()) == names
                assert sync.apps("elsewhere") == []  # as the async client: none there

                tasks = [sync.submit("sqrt", site="hpc", args=(float(x),)) for x in (4, 9)]
                echo = sync.submit("echo", site="hpc", params={"word": "hi"})
                seen = [i for i in sync.as_completed([*tasks, echo.id], timeout=UNIT)]
                assert sorted(i.id for i in seen) == sorted([tasks[0].id, tasks[1].id, echo.id])
                assert {i.state for i in seen} == {"JOB_FINISHED"}
                assert echo.info().stdout_tail == "hi\n"
                wrote = sync.submit("sh", site="hpc", params={"script": "echo 42 > out.txt"},
                                    outputs=["out.txt"])
                wrote.result(timeout=UNIT, check=True)
                assert sync.read_output(wrote, "out.txt") == b"42\n"

                # as_completed's timeout bounds the whole wait, as the async one's does.
                slow = sync.submit("sleep", site="hpc", args=(LONG, str(tmp_path / "x")))
                pending = sync.as_completed([tasks[0], slow], timeout=0.5)
                assert next(pending).id == tasks[0].id  # final already
                with pytest.raises(TimeoutError):
                    next(pending)
                assert slow.cancel() is True

                info, secret = sync.create_token(name="laptop")
                assert secret and info.id in {t.id for t in sync.tokens()}
                sync.revoke_token(info.id)
                assert any(a.action == "token.revoke" for a in sync.audit(limit=1000))

        await anyio.to_thread.run_sync(scenario)
