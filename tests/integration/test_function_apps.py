"""Python function apps: a callable named by import path runs in a pilot's warm worker;
arguments and results (numpy arrays included) travel as msgpack, never pickled."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

import tidewater
from tidewater import TaskFailed

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

FN = "tidewater.examples.functions"


async def test_function_tasks_run_in_warm_workers_with_numpy_values(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            for name in ("integrate", "normalize", "whoami", "shout", "boom", "nap", "noop"):
                await client.add_app("hpc", name, function=f"{FN}:{name}")
            await client.add_app("hpc", "echo", "echo {x}")
            await c.start_pilot(site_token, pilot_id="p1", cores=1)

            y = np.linspace(0.0, 1.0, 1001) ** 2
            t = await client.submit("integrate", site="hpc", args=(y,), kwargs={"dx": 0.001})
            assert await t.value() == pytest.approx(float(np.trapezoid(y, dx=0.001)))
            frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
            back = await (await client.submit("normalize", site="hpc", args=(frame,))).value()
            assert isinstance(back, np.ndarray) and back.shape == (3, 4)
            np.testing.assert_array_equal(back, (frame - 0) / 11.0)

            # The same warm worker serves the next call: no new interpreter.
            pids = [await (await client.submit("whoami", site="hpc")).value() for _ in range(3)]
            assert len(set(pids)) == 1

            shout = await client.submit("shout", site="hpc", args=("hi",))
            info = await shout.result()
            assert await shout.value() == "HI"
            assert info.stdout_tail == "to stdout: hi\n" and "to stderr: hi" in info.stderr_tail
            # A task that prints gets its work directory and output files; one that
            # neither prints nor writes a file gets nothing on disk.
            tasks = tmp_path / "work" / "p1" / "tasks"
            assert (tasks / str(shout.id) / "stdout.txt").read_text() == "to stdout: hi\n"
            assert not (tasks / str(t.id)).exists()

            bad = await client.submit("boom", site="hpc", args=("frame 7 is empty",),
                                      max_retries=0)
            with pytest.raises(TaskFailed, match="ValueError: frame 7 is empty"):
                await bad.value()
            assert "Traceback" in (await bad.result()).stderr_tail

            slow = await client.submit("nap", site="hpc", args=(30,), timeout=0.5,
                                       max_retries=0)
            info = await slow.result()
            assert info.state == "FAILED" and "timed out" in info.error
            # The worker that was killed is replaced: calls go on.
            assert await (await client.submit("noop", site="hpc", args=(5,))).value() == 5

            with pytest.raises(tidewater.ParamError, match="pass args, not params"):
                await client.submit("noop", site="hpc", params={"x": 1})
            with pytest.raises(tidewater.ParamError, match="pass params, not args"):
                await client.submit("echo", site="hpc", args=(1,))
            with pytest.raises(tidewater.AppError):
                await client.add_app("hpc", "bad", function="not a path")
            await client.add_app("hpc", "missing", function="no_such_module:f")
            gone = await client.submit("missing", site="hpc", max_retries=0)
            with pytest.raises(TaskFailed, match="No module named 'no_such_module'"):
                await gone.value()


async def test_executor_maps_numpy_functions_like_local_calls(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "integrate", function=f"{FN}:integrate")
            await client.add_app("hpc", "boom", function=f"{FN}:boom")
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
        frames = [np.random.default_rng(i).random(500) for i in range(20)]

        def remote() -> tuple[list[float], BaseException | None]:
            with tidewater.connect_sync(c.url, token=token) as sync:
                with sync.executor(site="hpc", max_retries=0) as ex:
                    got = list(ex.map("integrate", frames))
                    failed = ex.submit("boom", "no").exception(timeout=30)
            return got, failed

        got, failed = await anyio.to_thread.run_sync(remote)
        from tidewater.examples.functions import integrate

        assert got == [integrate(f) for f in frames]
        assert isinstance(failed, TaskFailed) and "ValueError: no" in str(failed)


async def test_large_results_are_listed_over_several_frames(tmp_path: Path) -> None:
    """Ten 900 kB return values with 4 MiB frames: listing and waiting page through them."""
    async with cluster(tmp_path) as c:
        await c.start_controller("--max-frame-bytes", str(4 << 20))
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            await client.add_app("hpc", "noop", function=f"{FN}:noop")
            blobs = [bytes([i]) * 900_000 for i in range(10)]
            tasks = [await client.submit("noop", site="hpc", args=(b,)) for b in blobs]
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
            infos = await client.wait(tasks, timeout=60)
            assert [i.state for i in infos] == ["JOB_FINISHED"] * 10
            listed = await client.tasks(limit=100)
            assert [i.id for i in listed] == [t.id for t in tasks]
            assert [await t.value() for t in tasks] == blobs
            newest = await client.tasks(newest=True, limit=100)
            assert 1 <= len(newest) < 10 and newest[-1].id == tasks[-1].id
