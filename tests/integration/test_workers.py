"""Warm worker processes running real Python functions (tests/fnapps.py).

A real pool of two workers: results equal local calls; a second call finds
its worker warm; a function's exception, a crash, a timeout, a cancelled
call, prints and reads of stdin all leave the pool working. Nothing here
waits with a sleep: a function announces itself through a named pipe, and
the end of a process that is not ours is awaited on its pidfd.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
import pytest

from tests import fnapps
from tidewater import codec
from tidewater.pilot.workers import CallResult, WorkerPool, WorkerStartError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The workers import `tests.fnapps`, so the project root goes on their path.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}
# Test time unit: far longer than a warm call takes, short enough for quick tests.
UNIT = 1.0
LONG = 60 * UNIT  # a call that must be stopped, never waited out


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    async with WorkerPool(size=2, env=ENV) as p:
        yield p


async def call(pool: WorkerPool, func: str, *args: Any, **kwargs: Any) -> CallResult:
    return await pool.call(f"tests.fnapps:{func}", codec.encode_call(args, kwargs))


async def value(pool: WorkerPool, func: str, *args: Any, **kwargs: Any) -> Any:
    result = await call(pool, func, *args, **kwargs)
    assert result.ok, result.error
    assert result.result is not None
    return codec.decode(result.result)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def exited(pid: int) -> None:
    """Wait until process ``pid`` (not necessarily ours) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(10 * UNIT):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


class Fifo:
    """A named pipe to give a call as its stdout: the test reads what the function
    announces the moment it is written. Opened for reading before the call, so the
    worker's open for writing never waits for the test."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    async def pids(self) -> tuple[int, int]:
        """The (worker pid, child pid) that `announce_then_sleep` printed."""
        line = b""
        with anyio.fail_after(10 * UNIT):
            while not line.endswith(b"\n"):
                await anyio.wait_readable(self.fd)
                chunk = os.read(self.fd, 256)
                assert chunk, "the worker closed its stdout before announcing"
                line += chunk
        worker, child = map(int, line.split())
        return worker, child


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    pipe = Fifo(tmp_path / "stdout.fifo")
    yield pipe
    os.close(pipe.fd)


# --------------------------------------------------------------------------- results


async def test_results_equal_local_calls(pool: WorkerPool) -> None:
    x = np.linspace(0.0, 1.0, 101) ** 2
    assert await value(pool, "add", 2, 3) == fnapps.add(2, 3)
    assert await value(pool, "add", "tide", "water") == "tidewater"
    assert await value(pool, "integrate", x, dx=0.01) == fnapps.integrate(x, dx=0.01)
    got = await value(pool, "scale", np.arange(6, dtype=">i4").reshape(2, 3), 2)
    expected = fnapps.scale(np.arange(6, dtype=">i4").reshape(2, 3), 2)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    sent = [None, True, 2**63, -1.5, "é", b"\x00", {"k": [1, (2, 3)]}, np.zeros((0, 2))]
    back_args, back_kwargs = await value(pool, "echo", *sent, key=np.float32(0.5))
    assert back_args[:7] == [None, True, 2**63, -1.5, "é", b"\x00", {"k": [1, [2, 3]]}]
    assert back_args[7].shape == (0, 2) and back_kwargs == {"key": 0.5}
    assert await value(pool, "Thing.double", 21) == 42
    assert await value(pool, "noop") is None


async def test_second_call_reuses_the_warm_worker(pool: WorkerPool) -> None:
    first = await call(pool, "whoami")
    second = await call(pool, "whoami")
    assert first.result is not None and second.result is not None
    pid = codec.decode(first.result)
    assert pid == first.worker_pid == second.worker_pid == codec.decode(second.result)
    assert pool.pids == [pid]  # started lazily: one call at a time needs one worker


async def test_at_most_size_calls_run_at_once(pool: WorkerPool) -> None:
    results: list[CallResult] = []

    async def one() -> None:
        results.append(await call(pool, "slow", 0.01))
        assert len(pool.pids) <= 2

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert all(r.ok for r in results) and len(results) == 6
    assert len({r.worker_pid for r in results}) == 2


async def test_start_prewarms_workers(pool: WorkerPool) -> None:
    await pool.start()
    pids = pool.pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    await pool.start()
    assert pool.pids == pids
    assert (await call(pool, "whoami")).worker_pid in pids


# --------------------------------------------------------------------------- failures


async def test_exception_is_a_result_with_traceback(pool: WorkerPool) -> None:
    pid = await value(pool, "whoami")
    result = await call(pool, "boom", "bad frame 17")
    assert not result.ok and result.result is None
    assert result.error == "ValueError: bad frame 17"
    assert "fnapps.py" in result.traceback and "in boom" in result.traceback
    assert result.traceback.rstrip().endswith("ValueError: bad frame 17")
    assert "workers.py" not in result.traceback  # starts in the user's code
    assert result.worker_pid == pid and await value(pool, "whoami") == pid  # still warm
    odd = await call(pool, "raise_unprintable")
    assert (
        odd.error == "Unprintable: <str() of the exception failed>"
        and "raise Unprintable" in odd.traceback
    )
    assert await value(pool, "whoami") == pid


async def test_sys_exit_fails_the_call_not_the_worker(pool: WorkerPool) -> None:
    pid = await value(pool, "whoami")
    result = await call(pool, "exits", 4)
    assert not result.ok and result.error == "SystemExit: 4"
    assert await value(pool, "whoami") == pid


async def test_unencodable_return_value_is_an_error(pool: WorkerPool) -> None:
    result = await call(pool, "unsendable")
    assert not result.ok
    assert result.error.startswith("CodecError: the return value of tests.fnapps:unsendable")
    assert "set" in result.error


async def test_unknown_module_or_function_is_a_clear_error(pool: WorkerPool) -> None:
    missing = await pool.call("tidewater_nope.analysis:integrate")
    assert not missing.ok
    assert missing.error.startswith("ModuleNotFoundError: cannot import 'tidewater_nope.analysis'")
    assert "No module named 'tidewater_nope'" in missing.error
    nothing = await pool.call("tests.fnapps:integrat")
    assert nothing.error == (
        "AttributeError: tests.fnapps has no attribute 'integrat' (function 'tests.fnapps:integrat')"
    )
    attr = await pool.call("tests.fnapps:Thing.triple")
    assert attr.error.startswith("AttributeError: tests.fnapps:Thing has no attribute 'triple'")
    constant = await pool.call("tests.fnapps:NOT_CALLABLE")
    assert constant.error.startswith("TypeError: 'tests.fnapps:NOT_CALLABLE' is not callable")
    with pytest.raises(ValueError, match="invalid module"):
        await pool.call(".fnapps:add")
    bad_args = await pool.call("tests.fnapps:add", b"\xc1")
    assert bad_args.error.startswith("CodecError: malformed")
    assert await value(pool, "add", 1, 1) == 2  # and the worker still serves


async def test_crash_is_a_clear_error_and_the_pool_recovers(pool: WorkerPool) -> None:
    result = await call(pool, "crash", 3)
    assert not result.ok
    assert result.error == "the worker process died (exit code 3) while running tests.fnapps:crash"
    assert not alive(result.worker_pid) and result.worker_pid not in pool.pids
    assert await value(pool, "add", 1, 2) == 3
    assert await value(pool, "whoami") != result.worker_pid


async def test_segfault_names_the_signal_and_leaves_a_python_stack(
    pool: WorkerPool, tmp_path: Path
) -> None:
    err = tmp_path / "stderr.txt"
    result = await pool.call("tests.fnapps:segfault", stderr=str(err))
    assert not result.ok
    assert result.error.startswith("the worker process died (exit code -11: killed by SIGSEGV)")
    assert "in segfault" in err.read_text()  # faulthandler wrote the stack to the call's stderr
    assert await value(pool, "add", 1, 2) == 3


async def test_timeout_kills_the_worker_and_what_it_started(pool: WorkerPool, fifo: Fifo) -> None:
    with pytest.raises(TimeoutError):
        await pool.call(
            "tests.fnapps:announce_then_sleep",
            codec.encode_call((LONG,), {}),
            timeout=UNIT,
            stdout=fifo.path,
        )
    worker, child = await fifo.pids()
    assert not alive(worker) and worker not in pool.pids
    await exited(child)  # the worker's child is killed with it
    fresh = await value(pool, "whoami")
    assert fresh != worker and pool.pids == [fresh]


async def test_cancelled_call_kills_its_worker(pool: WorkerPool, fifo: Fifo) -> None:
    async with anyio.create_task_group() as tg:

        async def doomed() -> None:
            await pool.call(
                "tests.fnapps:announce_then_sleep",
                codec.encode_call((LONG,), {}),
                stdout=fifo.path,
            )
            pytest.fail("the call was not cancelled")

        tg.start_soon(doomed)
        worker, child = await fifo.pids()
        tg.cancel_scope.cancel()
    assert not alive(worker) and pool.pids == []
    await exited(child)  # the worker's child is killed with it
    assert await value(pool, "add", 2, 2) == 4


# --------------------------------------------------------------------------- environment


async def test_prints_go_to_the_given_files_not_the_protocol(
    pool: WorkerPool, tmp_path: Path
) -> None:
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    result = await pool.call(
        "tests.fnapps:noisy", codec.encode_call((3,), {}), stdout=str(out), stderr=str(err)
    )
    assert result.ok and result.result is not None and codec.decode(result.result) == 3
    assert out.read_text() == "line 0\nline 1\nline 2\nraw fd 1\n"
    assert err.read_text() == "to stderr\n"
    # Without files the prints go to the worker's stderr: the files do not grow,
    # and the protocol still works.
    assert await value(pool, "noisy", 1) == 1
    assert out.read_text().count("\n") == 4 and err.read_text() == "to stderr\n"
    both = tmp_path / "both.txt"
    await pool.call(
        "tests.fnapps:noisy", codec.encode_call((1,), {}), stdout=str(both), stderr=str(both)
    )
    assert sorted(both.read_text().splitlines()) == ["line 0", "raw fd 1", "to stderr"]


async def test_output_file_that_cannot_be_opened_is_an_error(
    pool: WorkerPool, tmp_path: Path
) -> None:
    result = await pool.call("tests.fnapps:noop", stdout=str(tmp_path / "no" / "such" / "dir"))
    assert not result.ok and result.error.startswith("FileNotFoundError")
    assert await value(pool, "noop") is None


async def test_cwd_and_env_apply_to_one_call(pool: WorkerPool, tmp_path: Path) -> None:
    home = await value(pool, "getcwd")
    got = await pool.call("tests.fnapps:getcwd", cwd=str(tmp_path))
    assert got.result is not None and codec.decode(got.result) == str(tmp_path)
    assert await value(pool, "getcwd") == home
    name = "TIDEWATER_TEST_VARIABLE"
    got = await pool.call("tests.fnapps:getenv", codec.encode_call((name,), {}), env={name: "set"})
    assert got.result is not None and codec.decode(got.result) == "set"
    assert await value(pool, "getenv", name) is None
    missing = await pool.call("tests.fnapps:getcwd", cwd=str(tmp_path / "absent"))
    assert not missing.ok and missing.error.startswith("FileNotFoundError")


async def test_a_lazy_call_makes_its_directory_only_if_it_leaves_something(
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "scratch"
    async with WorkerPool(size=1, env=ENV, scratch=str(scratch)) as pool:

        async def lazily(func: str, wd: Path, *args: Any) -> CallResult:
            return await pool.call(f"tests.fnapps:{func}", codec.encode_call(args, {}),
                                   cwd=str(wd), stdout=str(wd / "out"), stderr=str(wd / "err"),
                                   lazy=True, tail=8)

        # Nothing printed, nothing written: no directory, no file, empty tails.
        quiet = await lazily("add", tmp_path / "t1", 1, 2)
        assert quiet.ok and quiet.result is not None and codec.decode(quiet.result) == 3
        assert quiet.tails == ("", "") and not (tmp_path / "t1").exists()

        # Prints and a file: the directory is made, with both; the tails are the ends.
        wd = tmp_path / "t2"
        busy = await lazily("noisy", wd, 2)
        assert busy.ok and busy.tails == ("aw fd 1\n", " stderr\n")  # the last 8 bytes
        assert (wd / "out").read_text() == "line 0\nline 1\nraw fd 1\n"
        assert (wd / "err").read_text() == "to stderr\n"
        left = await lazily("leave_file", tmp_path / "t3", "data.txt", "42", "saved")
        assert left.ok and left.tails == ("saved\n", "")
        assert (tmp_path / "t3" / "data.txt").read_text() == "42"
        assert (tmp_path / "t3" / "out").read_text() == "saved\n"
        # The function ran elsewhere (the worker's scratch), which is empty again.
        assert left.result is not None and codec.decode(left.result) != str(tmp_path / "t3")
        assert not any((scratch / str(left.worker_pid) / "cwd").iterdir())

        # Each call's output is its own: the scratch files start empty.
        again = await lazily("add", tmp_path / "t4", 2, 2)
        assert again.tails == ("", "") and not (tmp_path / "t4").exists()

        # A directory that exists (staged inputs) is used as it is.
        staged = tmp_path / "t5"
        staged.mkdir()
        (staged / "in.txt").write_text("staged")
        got = await lazily("read_file", staged, "in.txt")
        assert got.ok and got.result is not None and codec.decode(got.result) == "staged"
    assert not scratch.exists()


async def test_a_lazy_call_whose_files_cannot_be_kept_fails_with_the_errno(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    async with WorkerPool(size=1, env=ENV, scratch=str(tmp_path / "scratch")) as pool:
        wd = blocker / "sub"  # its parent is a file: the directory cannot be made
        res = await pool.call("tests.fnapps:leave_file", codec.encode_call(("a", "b"), {}),
                              cwd=str(wd), stdout=str(wd / "out"), stderr=str(wd / "err"),
                              lazy=True)
        assert not res.ok and res.files_errno == errno.ENOTDIR
        assert "cannot keep the call's files" in res.error
        assert await value(pool, "add", 1, 1) == 2


# --------------------------------------------------------------------------- lifecycle


async def test_closing_the_pool_stops_idle_and_busy_workers(fifo: Fifo) -> None:
    results: list[CallResult] = []
    async with anyio.create_task_group() as tg:
        pool = WorkerPool(size=2, env=ENV, close_timeout=2 * UNIT)
        async with pool:
            await pool.start()
            pids = pool.pids

            async def busy() -> None:
                results.append(
                    await pool.call(
                        "tests.fnapps:announce_then_sleep",
                        codec.encode_call((LONG,), {}),
                        stdout=fifo.path,
                    )
                )

            tg.start_soon(busy)
            busy_pid, child = await fifo.pids()
            (idle_pid,) = set(pids) - {busy_pid}
        assert not alive(idle_pid) and not alive(busy_pid)
    (result,) = results
    assert not result.ok and "SIGTERM" in result.error
    await exited(child)  # the busy worker's child is stopped too
    with pytest.raises(RuntimeError, match="closed"):
        await pool.call("tests.fnapps:noop")


@pytest.mark.parametrize(
    ("python", "says"),
    [("/nonexistent/python3", "cannot start a worker"), ("/bin/false", "exited with code 1")],
)
async def test_a_worker_that_cannot_start_is_an_error(python: str, says: str) -> None:
    async with WorkerPool(size=1, env=ENV, python=python) as pool:
        with pytest.raises(WorkerStartError, match=says):
            await pool.call("tests.fnapps:noop")
        assert pool.pids == []


async def test_wire_protocol_by_hand() -> None:
    """The frames a worker speaks, and its exit on a request it cannot read."""
    from anyio.streams.buffered import BufferedByteReceiveStream

    def frame(obj: object) -> bytes:
        body = msgspec.msgpack.encode(obj)
        return len(body).to_bytes(4, "big") + body

    argv = [sys.executable, "-P", "-c", "from tidewater.pilot.workers import main; main()"]
    async with await anyio.open_process(argv, env=ENV, stderr=None) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        stream = BufferedByteReceiveStream(proc.stdout)

        async def receive() -> Any:
            size = int.from_bytes(await stream.receive_exactly(4), "big")
            return msgspec.msgpack.decode(await stream.receive_exactly(size))

        with anyio.fail_after(30 * UNIT):
            assert await receive() == {"pid": proc.pid, "ready": True}
            await proc.stdin.send(
                frame({"id": 7, "func": "tests.fnapps:add", "args": codec.encode_call((1, 2), {})})
            )
            reply = await receive()
            assert reply == {
                "id": 7,
                "ok": True,
                "result": codec.encode(3),
                "error": "",
                "traceback": "",
                "tails": None,
                "files_errno": 0,
                "exc_type": "",
                "exc_builtins": [],
                "message": "",
            }
            # A function that raised: its type by name and its built-in ancestors, no pickle.
            await proc.stdin.send(
                frame({"id": 8, "func": "tests.fnapps:boom", "args": codec.encode_call(("x",), {})})
            )
            reply = await receive()
            assert not reply["ok"] and reply["error"] == "ValueError: x"
            assert reply["exc_type"] == "builtins.ValueError" and reply["message"] == "x"
            assert reply["exc_builtins"] == ["ValueError", "Exception"]
            assert 'fnapps.py", line' in reply["traceback"]
            await proc.stdin.send(frame({"id": "not an int"}))
            assert await proc.wait() == 2
    assert proc.returncode == 2
