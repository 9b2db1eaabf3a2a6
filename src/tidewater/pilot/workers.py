"""Warm Python worker processes for function apps.

A function app names a callable by import path (``pkg.mod:name``) that exists
in the site's Python environment. Starting an interpreter and importing numpy
for every call would cost far more than most analysis functions take, so a
pilot keeps a :class:`WorkerPool` of warm workers: each runs
:func:`main` (``python -P -c "from tidewater.pilot.workers import main; main()"``,
or by hand ``python -m tidewater.pilot.workers``), a loop that reads requests, imports
the named module on first use (and keeps the function object), calls it in
its main thread and replies. No code travels: a request names the function,
and its arguments and return value are :mod:`tidewater.codec` msgpack, never
pickle.

The pipe protocol, one msgpack map per frame, each frame a 4-byte big-endian
length then the bytes::

    worker -> pool   {"pid": int, "ready": true}                 once, at start
    pool -> worker   {"id": int, "func": "mod:name", "args": bytes,
                      "cwd": str | None, "stdout": str | None,
                      "stderr": str | None, "env": {str: str} | None,
                      "scratch": str | None, "tail": int}
    worker -> pool   {"id": int, "ok": bool, "result": bytes | None,
                      "error": str, "traceback": str,
                      "tails": [str, str] | None,
                      "exc_type": str, "exc_builtins": [str]}

``args`` is :func:`tidewater.codec.encode_call` (empty: no arguments);
``result`` is :func:`tidewater.codec.encode` of the return value. When the
function raised, ``exc_type`` is the exception's qualified type name and
``exc_builtins`` the names of its built-in ancestors that derive from
``Exception`` (nearest first; empty for ``SystemExit`` and the like): the
client raises the exception as that built-in, never from a pickle. The worker
keeps its protocol on private duplicates of its original stdin and stdout:
fd 0 becomes ``/dev/null`` and fd 1 its stderr, so a function that prints
(from Python, C or a child process) or reads stdin cannot corrupt the
protocol. With ``stdout``/``stderr`` paths, fds 1 and 2 point at those files
(opened for appending, created if missing) for the duration of the call;
``cwd`` and ``env`` likewise apply to one call and are restored after it.

With ``scratch`` (a directory on the same filesystem as ``cwd``, private
to this pool), a call whose ``cwd`` does not exist yet creates nothing up
front: it runs in the worker's own scratch directory, with fds 1 and 2 on
the worker's scratch files (emptied before each call). After the call, if
the function left files or printed anything, ``cwd`` is created, the files
are moved into it and the output is appended to ``stdout``/``stderr``; a
function that does neither (most) costs no directory, no file and no open.
The reply then carries the tails (the last ``tail`` bytes) of both, so the
pool's caller reads no file either. A child process the function leaves
running keeps writing to the scratch files, so its output lands in a later
call's (a timeout or a cancelled call kills the worker's group, and with it
any such child).

Workers run in their own session (process group): a timeout, a cancelled
call or closing the pool kills the group, so whatever the function started
goes with it. ``-P`` keeps the worker's start directory off ``sys.path``:
functions come from the environment (installed packages, ``PYTHONPATH``),
never from a file that happens to sit in a work directory.

State a function leaves behind (module globals, threads, changed ``sys``
attributes) stays with its worker and is seen by later calls; that is the
price of warm workers, as in any process pool.
"""

from __future__ import annotations

import faulthandler
import importlib
import itertools
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from subprocess import PIPE
from types import TracebackType
from typing import Any, BinaryIO, Literal

import anyio
import msgspec
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ..codec import CodecError, check_import_path, decode_call, encode
from ..errors import WorkerStartError

__all__ = ["CallResult", "WorkerPool", "WorkerStartError", "main"]

TAIL = 4096
"""How much of an error message and of a traceback a reply carries (the end of a traceback)."""

_MAX_FRAME = 2**32 - 1
# Not ``-m tidewater.pilot.workers``: the pilot package imports this module, and
# runpy would then run a second copy of it as __main__ (with a RuntimeWarning).
_WORKER_MAIN = "from tidewater.pilot.workers import main; main()"
_HEADER = 4


@dataclass(frozen=True)
class CallResult:
    """What one call of a function app gave.

    ``ok``: the function returned and ``result`` is its encoded return value
    (:func:`tidewater.codec.decode` it). Otherwise ``error`` says what went
    wrong (``"ValueError: bad frame"``, ``"the worker process died (exit
    code 3) ..."``) and ``traceback`` is the end of the formatted traceback,
    when there is one. ``worker_pid`` is the worker process that ran it.
    """

    ok: bool
    result: bytes | None
    error: str = ""
    traceback: str = ""
    worker_pid: int = 0
    tails: tuple[str, str] | None = None
    """(stdout, stderr) tails, for a call made with a scratch directory."""
    files_errno: int = 0
    """Such a call ran, but what it left could not be moved to its ``cwd`` (``ok`` is False)."""
    exc_type: str = ""
    """The function raised: its exception's qualified type name (``builtins.KeyError``)."""
    exc_builtins: tuple[str, ...] = ()
    """... and the names of that type's built-in ancestors deriving from Exception."""
    message: str = ""
    """... and ``str()`` of the exception (bounded)."""


class _Hello(msgspec.Struct, frozen=True):
    pid: int
    ready: bool = True


class _Request(msgspec.Struct, frozen=True):
    id: int
    func: str
    args: bytes = b""
    cwd: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    env: dict[str, str] | None = None
    scratch: str | None = None
    tail: int = TAIL


class _Reply(msgspec.Struct, frozen=True):
    id: int
    ok: bool
    result: bytes | None = None
    error: str = ""
    traceback: str = ""
    tails: tuple[str, str] | None = None
    files_errno: int = 0
    exc_type: str = ""
    exc_builtins: list[str] = []
    message: str = ""


_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(_Hello)
_request_decoder = msgspec.msgpack.Decoder(_Request)
_reply_decoder = msgspec.msgpack.Decoder(_Reply)


def _frame(body: bytes) -> bytes:
    if len(body) > _MAX_FRAME:
        raise ValueError(f"a worker message of {len(body)} bytes exceeds the 4 GiB frame limit")
    return len(body).to_bytes(_HEADER, "big") + body


# --------------------------------------------------------------------------- the worker


def _head(text: str) -> str:
    return text if len(text) <= TAIL else text[:TAIL] + "..."


def _tail(text: str) -> str:
    return text if len(text) <= TAIL else "...\n" + text[-TAIL:]


def _failure(req_id: int, exc: BaseException) -> _Reply:
    tb = exc.__traceback__
    # Drop the worker's own frames when the function raised: the traceback
    # starts in the user's code.
    frame = tb
    while frame is not None:
        if frame.tb_frame.f_code is _run.__code__:
            tb = frame.tb_next
            break
        frame = frame.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception:  # an exception's __str__ is user code too
        message = "<str() of the exception failed>"
    return _Reply(
        id=req_id, ok=False, error=_head(f"{type(exc).__name__}: {message}"), traceback=_tail(text),
        exc_type=_head(qualified_name(type(exc))), exc_builtins=builtin_ancestors(type(exc)),
        message=_head(message),
    )


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.ValueError``)."""
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def builtin_ancestors(cls: type) -> list[str]:
    """The names of the built-in classes in ``cls``'s MRO that derive from Exception,
    nearest first (``FileNotFoundError`` -> ``FileNotFoundError, OSError, Exception``;
    ``SystemExit`` -> nothing)."""
    return [c.__name__ for c in cls.__mro__
            if c.__module__ == "builtins" and issubclass(c, Exception)]


def _resolve(path: str, cache: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The callable at ``path``, imported once per worker."""
    func = cache.get(path)
    if func is not None:
        return func
    module_name, qualname = check_import_path(path)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"cannot import {module_name!r} for function {path!r}: {exc} "
            f"(in the Python environment of {sys.executable})",
            name=exc.name,
        ) from exc
    for i, part in enumerate(qualname.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = module_name if i == 0 else f"{module_name}:{qualname.split('.')[0]}"
            raise AttributeError(f"{owner} has no attribute {part!r} (function {path!r})") from None
    if not callable(obj):
        raise TypeError(f"{path!r} is not callable (it is of type {type(obj).__name__})")
    cache[path] = obj
    return obj  # type: ignore[no-any-return]


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a function may have closed or replaced them
            pass


class _Server:
    """The worker's side: one request at a time, in the main thread."""

    def __init__(self) -> None:
        # The protocol keeps private duplicates of fds 0 and 1 (non-inheritable,
        # so child processes do not hold the pipes open); the function gets
        # /dev/null as stdin and the worker's stderr as stdout.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        self.stderr = os.dup(2)
        self.home = os.open(".", os.O_RDONLY)
        self.cache: dict[str, Callable[..., Any]] = {}
        self.scratch: _Scratch | None = None

    def serve(self) -> int:
        """Answer requests until stdin closes; the process's exit status."""
        with open(self.proto_in, "rb") as inp, open(self.proto_out, "wb") as out:
            self._write(out, _encoder.encode(_Hello(pid=os.getpid())))
            while True:
                header = inp.read(_HEADER)
                if not header:
                    return 0
                size = int.from_bytes(header, "big")
                body = inp.read(size)
                if len(header) < _HEADER or len(body) < size:
                    sys.stderr.write("tidewater worker: truncated request; exiting\n")
                    return 2
                try:
                    req = _request_decoder.decode(body)
                except msgspec.MsgspecError as exc:
                    sys.stderr.write(f"tidewater worker: malformed request ({exc}); exiting\n")
                    return 2
                reply = _encoder.encode(self.call_lazily(req) if self._lazy(req)
                                        else self.call(req))
                if len(reply) > _MAX_FRAME:
                    reply = _encoder.encode(
                        _Reply(
                            id=req.id,
                            ok=False,
                            error=(
                                f"CodecError: the return value of {req.func} encodes to "
                                f"{len(reply)} bytes, more than the 4 GiB a reply can carry"
                            ),
                        )
                    )
                self._write(out, reply)

    @staticmethod
    def _write(out: BinaryIO, body: bytes) -> None:
        out.write(_frame(body))
        out.flush()

    def call(self, req: _Request, fds: tuple[int, int] | None = None) -> _Reply:
        """Run one request with its cwd, env and output files (or ``fds`` for fds 1 and 2);
        never raises an Exception."""
        _flush_std()
        opened: list[int] = []
        saved_env: dict[str, str | None] = {}
        try:
            if fds is not None:
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
            else:
                self._redirect(req, opened)
            if req.cwd:
                os.chdir(req.cwd)
            for key, value in (req.env or {}).items():
                saved_env.setdefault(key, os.environ.get(key))
                os.environ[key] = value
            func = _resolve(req.func, self.cache)
            args, kwargs = decode_call(req.args)
            value = _run(func, args, kwargs)
            try:
                result = encode(value)
            except CodecError as exc:
                return _Reply(
                    id=req.id,
                    ok=False,
                    error=_head(
                        f"CodecError: the return value of {req.func} cannot be sent: {exc}"
                    ),
                )
            return _Reply(id=req.id, ok=True, result=result)
        except (SystemExit, KeyboardInterrupt) as exc:
            # sys.exit() (or raising KeyboardInterrupt) in a function ends the call,
            # not the warm worker.
            return _failure(req.id, exc)
        except Exception as exc:
            return _failure(req.id, exc)
        finally:
            _flush_std()
            os.dup2(self.stderr, 1)
            os.dup2(self.stderr, 2)
            for fd in opened:
                os.close(fd)
            os.fchdir(self.home)
            for key, old in saved_env.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


    @staticmethod
    def _redirect(req: _Request, opened: list[int]) -> None:
        """Point fds 1 and 2 at the request's output files (opened for appending)."""
        if req.stdout:
            fd = os.open(req.stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            opened.append(fd)
            os.dup2(fd, 1)
        if req.stderr and req.stderr == req.stdout:
            os.dup2(1, 2)
        elif req.stderr:
            fd = os.open(req.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            opened.append(fd)
            os.dup2(fd, 2)

    def _lazy(self, req: _Request) -> bool:
        """Whether ``req`` runs in the scratch directory (its ``cwd`` does not exist yet)."""
        if not req.scratch or not req.cwd or os.path.lexists(req.cwd):
            return False
        if self.scratch is None or self.scratch.root != req.scratch:
            self.scratch = _Scratch(req.scratch)
        return True

    def call_lazily(self, req: _Request) -> _Reply:
        """Run ``req`` in the scratch directory; give its files and output to ``cwd`` after."""
        sc = self.scratch
        assert sc is not None and req.cwd is not None
        os.ftruncate(sc.out, 0)
        os.ftruncate(sc.err, 0)
        merged = req.stderr == req.stdout
        reply = self.call(msgspec.structs.replace(req, cwd=sc.cwd),
                          (sc.out, sc.out if merged else sc.err))
        try:
            tails = sc.settle(req)
        except OSError as exc:
            return _Reply(id=req.id, ok=False, files_errno=exc.errno or 0,
                          error=_head(f"cannot keep the call's files in {req.cwd}: {exc}"))
        return msgspec.structs.replace(reply, tails=tails)


class _Scratch:
    """A worker's scratch directory and output files (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = root
        base = os.path.join(root, str(os.getpid()))
        self.cwd = os.path.join(base, "cwd")
        os.makedirs(self.cwd, exist_ok=True)
        self.out_path = os.path.join(base, "stdout")
        self.err_path = os.path.join(base, "stderr")
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self.out = os.open(self.out_path, flags, 0o644)
        self.err = os.open(self.err_path, flags, 0o644)

    def settle(self, req: _Request) -> tuple[str, str]:
        """Move what the call left into ``req.cwd`` (created only then); the output's tails."""
        assert req.cwd is not None
        out_size, err_size = os.fstat(self.out).st_size, os.fstat(self.err).st_size
        with os.scandir(self.cwd) as it:
            left = [e.name for e in it]
        if left or out_size or err_size:
            os.makedirs(req.cwd, exist_ok=True)
            for name in left:
                dest = os.path.join(req.cwd, name)
                if os.path.isdir(dest) and not os.path.islink(dest):
                    shutil.copytree(os.path.join(self.cwd, name), dest, symlinks=True,
                                    dirs_exist_ok=True)
                    shutil.rmtree(os.path.join(self.cwd, name))
                else:
                    os.replace(os.path.join(self.cwd, name), dest)
            for fd, size, path in ((self.out, out_size, req.stdout), (self.err, err_size,
                                                                     req.stderr)):
                if path and (size or not os.path.exists(path)):
                    _append(fd, size, path)
        return _tail_of(self.out, out_size, req.tail), _tail_of(self.err, err_size, req.tail)


def _append(fd: int, size: int, path: str) -> None:
    """Append the first ``size`` bytes of ``fd`` to the file at ``path`` (created if missing)."""
    dest = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        done = 0
        while done < size:  # (sendfile cannot write to a file opened for appending)
            chunk = os.pread(fd, min(size - done, 1 << 20), done)
            if not chunk:
                break
            os.write(dest, chunk)
            done += len(chunk)
    finally:
        os.close(dest)


def _tail_of(fd: int, size: int, limit: int) -> str:
    if size == 0 or limit <= 0:
        return ""
    start = max(0, size - limit)
    return os.pread(fd, size - start, start).decode("utf-8", "replace")


def _run(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)


def main() -> None:
    """The worker process: serve requests on stdin/stdout until stdin closes."""
    # A crash in a C extension prints the Python stack to fd 2: the call's stderr file.
    faulthandler.enable()
    sys.exit(_Server().serve())


# --------------------------------------------------------------------------- the pool


class _WorkerDied(Exception):
    pass


_How = Literal["kill", "terminate", "close"]


class _Worker:
    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.pid = process.pid
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.gone = False
        self.returncode: int | None = None

    async def receive(self) -> bytes:
        try:
            size = int.from_bytes(await self.stdout.receive_exactly(_HEADER), "big")
            return await self.stdout.receive_exactly(size) if size else b""
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        ) as exc:
            raise _WorkerDied from exc

    async def exchange(self, frame: bytes) -> bytes:
        try:
            await self.stdin.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise _WorkerDied from exc
        return await self.receive()

    def signal_group(self, sig: int) -> None:
        # The worker leads its own session, so its pid is the group's id; the group
        # outlives the worker while anything the function started still runs.
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, how: _How, grace: float) -> int:
        """End the worker and its process group; its exit status. Shielded, bounded by 2 * grace.

        ``how``: ``"kill"`` at once (timed out, cancelled, died, broke the
        protocol), ``"terminate"`` (SIGTERM: busy when the pool closes) or
        ``"close"`` its stdin (idle: it exits by itself), then SIGKILL after ``grace``.
        """
        with anyio.CancelScope(shield=True):
            if self.gone:  # another task is stopping it: wait for the outcome
                with anyio.move_on_after(2 * grace):
                    self.returncode = await self.process.wait()
            else:
                self.gone = True
                if how == "close":
                    await self.stdin.aclose()
                elif how == "terminate":
                    self.signal_group(signal.SIGTERM)
                if how != "kill":
                    with anyio.move_on_after(grace):
                        self.returncode = await self.process.wait()
                # Also whatever the function left running in the worker's session.
                self.signal_group(signal.SIGKILL)
                with anyio.move_on_after(grace):
                    self.returncode = await self.process.wait()
                    await self.process.aclose()
        return self.returncode if self.returncode is not None else -signal.SIGKILL


def _death(returncode: int, func: str) -> str:
    how = ""
    if returncode < 0:
        try:
            how = f": killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f": killed by signal {-returncode}"
    return f"the worker process died (exit code {returncode}{how}) while running {func}"


class WorkerPool:
    """Up to ``size`` warm worker processes running function apps, one call each at a time.

    ``async with WorkerPool(size=4, env=env) as pool: r = await pool.call(...)``.
    Workers start lazily on first use (or with :meth:`start`) and stay warm
    between calls; a call takes a free worker (the most recently used, whose
    caches are warmest) and at most ``size`` calls run at once, others wait
    in order. A worker that dies, times out or is cancelled is killed and
    replaced by a new one on demand.

    ``env`` is the workers' whole environment (``None``: this process's);
    ``python`` the interpreter (3.11 or later, with tidewater installed);
    ``cwd`` the directory they start in; ``start_timeout`` how long a new
    worker may take to be ready; ``close_timeout`` how long a worker may take
    to exit when asked before it is killed; ``scratch`` a directory for the
    workers' scratch directories (on the filesystem of the calls' ``cwd``;
    removed when the pool closes), needed by ``lazy`` calls.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        cwd: str | None = None,
        start_timeout: float = 60.0,
        close_timeout: float = 5.0,
        scratch: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {size}")
        self.size = size
        self._env = dict(env) if env is not None else None
        self._python = python
        self._cwd = cwd
        self._start_timeout = start_timeout
        self._close_timeout = close_timeout
        self._scratch = scratch
        self._slots = anyio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers, idle or busy (sorted)."""
        return sorted(w.pid for w in self._live)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self, n: int | None = None) -> None:
        """Start workers until ``n`` (default and at most ``size``) are alive, and wait until ready.

        Raises :class:`WorkerStartError` if one cannot start. Cancel-safe: a
        worker that was not ready yet is killed.
        """
        want = self.size if n is None else min(n, self.size)
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        async with anyio.create_task_group() as tg:
            for _ in range(max(0, want - len(self._live))):
                tg.start_soon(self._warm_one)

    async def _warm_one(self) -> None:
        async with self._slots:
            if len(self._live) < self.size and not self._closed:
                self._idle.append(await self._spawn())

    async def call(
        self,
        func: str,
        args: bytes = b"",
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
        env: Mapping[str, str] | None = None,
        lazy: bool = False,
        tail: int = TAIL,
    ) -> CallResult:
        """Call ``func`` (``pkg.mod:name``) with ``args`` (:func:`~tidewater.codec.encode_call`).

        Waits for a free worker, starting one if fewer than ``size`` are
        alive. ``timeout`` bounds the call once it is on a worker (not the
        wait for one). ``cwd``, ``stdout``/``stderr`` (files, appended to) and
        ``env`` (variables set on top of the worker's) apply to this call only.
        ``lazy`` (with a pool made with ``scratch``): if ``cwd`` does not
        exist, run in the worker's scratch directory and create ``cwd`` and
        the output files only if the call leaves something (see the module
        docstring); the result's ``tails`` are then the last ``tail`` bytes
        of its stdout and stderr.

        The function's failures are results, not exceptions: it raised, could
        not be imported, returned something the codec refuses, or its worker
        died (``ok=False``, with ``error`` and ``traceback``).

        Raises :class:`ValueError` for a malformed import path,
        :class:`TimeoutError` when ``timeout`` expires (the worker is killed),
        :class:`WorkerStartError` when no worker could be started and
        :class:`RuntimeError` when the pool is closed. Cancel-safe: a
        cancelled call kills its worker (and what it started) and is never
        left running.
        """
        check_import_path(func)
        request = _Request(
            id=next(self._ids),
            func=func,
            args=args,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            scratch=self._scratch if lazy else None,
            tail=tail,
        )
        frame = _frame(_encoder.encode(request))
        async with self._slots:
            worker = await self._checkout()
            data: bytes | None = None
            returncode = 0
            try:
                with anyio.fail_after(timeout):
                    data = await worker.exchange(frame)
            except _WorkerDied:
                data = None
            finally:
                if data is None:  # died, timed out or cancelled: it is not reusable
                    returncode = await self._discard(worker, "kill")
            if data is None:
                return CallResult(
                    ok=False, result=None, error=_death(returncode, func), worker_pid=worker.pid
                )
            try:
                reply = _reply_decoder.decode(data)
                if reply.id != request.id:
                    raise ValueError(f"reply to request {reply.id}, expected {request.id}")
            except (msgspec.MsgspecError, ValueError) as exc:
                await self._discard(worker, "kill")
                return CallResult(
                    ok=False,
                    result=None,
                    worker_pid=worker.pid,
                    error=f"the worker process broke the protocol running {func}: {exc}",
                )
            if self._closed:
                await self._discard(worker, "close")
            else:
                self._idle.append(worker)
            return CallResult(
                ok=reply.ok,
                result=reply.result,
                error=reply.error,
                traceback=reply.traceback,
                worker_pid=worker.pid,
                tails=reply.tails,
                files_errno=reply.files_errno,
                exc_type=reply.exc_type,
                exc_builtins=tuple(reply.exc_builtins),
                message=reply.message,
            )

    async def _checkout(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        while self._idle:
            worker = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            await self._discard(worker, "kill")  # died while idle
        return await self._spawn()

    async def _spawn(self) -> _Worker:
        argv = [self._python, "-P", "-c", _WORKER_MAIN]
        try:
            process = await anyio.open_process(
                argv,
                stdin=PIPE,
                stdout=PIPE,
                stderr=None,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise WorkerStartError(argv, str(exc), spawned=False) from exc
        worker = _Worker(process)
        self._live.add(worker)
        ready = False
        try:
            with anyio.fail_after(self._start_timeout):
                hello = _hello_decoder.decode(await worker.receive())
            ready = True
        except _WorkerDied:
            returncode = await self._discard(worker, "kill")
            raise WorkerStartError(
                argv, f"exited with code {returncode} before it was ready; its stderr (this "
                "process's) says why. Is tidewater installed in that Python?",
                returncode=returncode,
            ) from None
        except TimeoutError:
            raise WorkerStartError(
                argv, f"was not ready within {self._start_timeout} s"
            ) from None
        except msgspec.MsgspecError as exc:
            raise WorkerStartError(argv, f"did not start the protocol: {exc}") from None
        finally:
            if not ready:
                await self._discard(worker, "kill")
        if hello.pid != worker.pid:
            await self._discard(worker, "kill")
            raise WorkerStartError(
                argv, f"is not a worker of its own (pid {hello.pid}, not {worker.pid})"
            )
        return worker

    async def _discard(self, worker: _Worker, how: _How) -> int:
        self._live.discard(worker)
        returncode = await worker.stop(how, self._close_timeout)
        if self._scratch:
            shutil.rmtree(os.path.join(self._scratch, str(worker.pid)), ignore_errors=True)
        return returncode

    async def aclose(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones terminated; after
        ``close_timeout`` the rest are killed. Calls made afterwards raise RuntimeError.
        Cancel-safe (shielded, bounded by about twice ``close_timeout``)."""
        self._closed = True
        idle = set(self._idle)
        self._idle.clear()
        workers = list(self._live)
        self._live.clear()
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    how: _How = "close" if worker in idle else "terminate"
                    tg.start_soon(worker.stop, how, self._close_timeout)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
