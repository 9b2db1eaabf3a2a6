"""A function task's exception comes back catchable as the built-in it derives from.

A real controller and a real local pilot with warm workers run the functions
of tests/fnapps.py: ``except ValueError:`` catches a remote
``math.sqrt(-1.0)``, which is also a :class:`TaskFailed` carrying the remote
traceback; KeyError, ZeroDivisionError, FileNotFoundError, UnicodeDecodeError
and a user's ValueError subclass likewise; a user's exception deriving from
no built-in, ``sys.exit``, ``KeyboardInterrupt`` and a failed command task are
plain TaskFailed.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import anyio
import pytest

import tidewater
from tidewater import TaskFailed
from tidewater.client import Client

from .procs import cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

ROOT = Path(__file__).resolve().parents[2]
FN = "tests.fnapps"
FUNCTIONS = ("sqrt", "lookup", "divide", "read_text", "decode", "bad_frame", "unrelated",
             "interrupt", "exits", "whoami")


def sqrt_line() -> int:
    """The line of tests/fnapps.py that calls math.sqrt."""
    lines = (ROOT / "tests" / "fnapps.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "return math.sqrt(x)" in line)


async def failure(client: Client, app: str, *args: object) -> TaskFailed:
    """What ``value()`` of a call of ``app`` raised (it must raise a TaskFailed)."""
    task = await client.submit(app, site="hpc", args=args, max_retries=0)
    with pytest.raises(TaskFailed) as caught:
        await task.value(timeout=60)
    assert caught.value.task_id == task.id
    return caught.value


async def test_remote_exceptions_are_caught_as_their_builtin_type(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        c.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _site, site_token = await client.add_site("hpc")
            for name in FUNCTIONS:
                await client.add_app("hpc", name, function=f"{FN}:{name}")
            await client.add_app("hpc", "false", "false")
            await c.start_pilot(site_token, pilot_id="p1", cores=1)

            # math.sqrt(-1.0) on the site: `except ValueError` catches it.
            task = await client.submit("sqrt", site="hpc", args=(-1.0,), max_retries=0)
            try:
                await task.value(timeout=60)
            except ValueError as exc:
                e = exc
            else:
                pytest.fail("sqrt(-1.0) returned")
            assert isinstance(e, TaskFailed) and isinstance(e, tidewater.TidewaterError)
            assert type(e).__name__ == "RemoteValueError"
            assert e.task_id == task.id and e.state == "FAILED"
            assert e.remote_type == "builtins.ValueError"
            assert e.remote_message == "math domain error"
            assert str(e) == (f"task {task.id} ended FAILED (exit code 1): "
                              "ValueError: math domain error")
            # The remote traceback names the function's line, and an uncaught one prints it.
            assert f'fnapps.py", line {sqrt_line()}, in sqrt' in e.remote_traceback
            printed = "".join(traceback.format_exception(e))
            assert "return math.sqrt(x)" in printed and "math domain error" in printed
            assert "RemoteValueError" in printed
            # The listing keeps what was raised, read back from the store.
            (info,) = await client.tasks(ids=[task.id])
            assert info.exception is not None and info.exception.type == "builtins.ValueError"
            assert info.exception.builtins == ["ValueError", "Exception"]

            e = await failure(client, "lookup", "frame")
            assert isinstance(e, KeyError) and isinstance(e, LookupError)
            assert "KeyError: 'frame'" in str(e)  # the message, not KeyError's repr of it

            e = await failure(client, "divide", 1.0, 0.0)
            assert isinstance(e, ZeroDivisionError) and isinstance(e, ArithmeticError)

            e = await failure(client, "read_text", str(tmp_path / "no such file"))
            assert isinstance(e, FileNotFoundError) and isinstance(e, OSError)
            assert "No such file or directory" in str(e)

            e = await failure(client, "decode", b"\xff\xfe")
            assert isinstance(e, UnicodeDecodeError) and isinstance(e, ValueError)
            assert "can't decode byte 0xff" in str(e) and repr(e)

            # A user's class deriving from ValueError is caught as a ValueError.
            e = await failure(client, "bad_frame", 7)
            assert isinstance(e, ValueError)
            assert e.remote_type == "tests.fnapps.FrameError"
            assert "FrameError: frame 7 is empty" in str(e)

            # One deriving from no built-in but Exception, sys.exit and KeyboardInterrupt
            # raised by the function are plain TaskFailed.
            e = await failure(client, "unrelated")
            assert type(e) is TaskFailed and e.remote_type == "tests.fnapps.Unrelated"
            assert "nothing built in about it" in str(e)
            worker = await (await client.submit("whoami", site="hpc")).value(timeout=60)
            e = await failure(client, "exits", 3)
            assert type(e) is TaskFailed and e.remote_type == "builtins.SystemExit"
            e = await failure(client, "interrupt")
            assert type(e) is TaskFailed and e.remote_type == "builtins.KeyboardInterrupt"
            # ... and neither ended the warm worker.
            assert await (await client.submit("whoami", site="hpc")).value(
                timeout=60) == worker

            # A command task's failure is a plain TaskFailed.
            e = await failure(client, "false")
            assert type(e) is TaskFailed and e.remote_type == "" and e.exit_code == 1

        # The sync facade raises the same.
        def sync_sqrt() -> BaseException | None:
            with tidewater.connect_sync(c.url, token=token) as sync:
                try:
                    sync.submit("sqrt", site="hpc", args=(-4.0,), max_retries=0).value(
                        timeout=60)
                except ValueError as exc:
                    return exc
            return None

        got = await anyio.to_thread.run_sync(sync_sqrt)
        assert isinstance(got, TaskFailed) and isinstance(got, ValueError)
        assert "math.sqrt" in got.remote_traceback
