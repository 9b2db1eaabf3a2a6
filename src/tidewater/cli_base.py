"""What every ``tidewater`` command shares: the consoles, the client, the runner."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import IntEnum
from typing import Any, NoReturn, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .client import Client
from .config import Timeouts
from .durations import DurationError, parse_duration
from .errors import (
    AuthError,
    ConfigError,
    ConnectionError_,
    InvalidRequest,
    NotFound,
    TidewaterError,
)
from .profiles import Resolved, load_config, read_token, resolve
from .progress import Notice

T = TypeVar("T")
# Piped or captured tables are not cut to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _loop_options() -> dict[str, Any]:
    """anyio's backend options: uvloop when TIDEWATER_EVENT_LOOP=uvloop (the ``fast`` extra)."""
    choice = os.environ.get("TIDEWATER_EVENT_LOOP", "asyncio")
    if choice == "asyncio":
        return {}
    if choice != "uvloop":
        raise click.UsageError(f"TIDEWATER_EVENT_LOOP={choice!r}: use asyncio or uvloop")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        raise click.UsageError("TIDEWATER_EVENT_LOOP=uvloop needs uvloop: "
                               "pip install 'tidewater-hpc[fast]'") from None
    return {"use_uvloop": True}


class Exit(IntEnum):
    """The exit codes of every ``tidewater`` command (docs/cli.md lists them)."""

    OK = 0
    """Success."""
    FAILED = 1
    """A task failed or was cancelled (``show --wait``, ``wait``, ``submit --wait``), or
    another error the codes below do not name."""
    USAGE = 2
    """The command line or configuration is wrong (click's usage errors, bad durations,
    an unknown profile)."""
    NOT_FOUND = 3
    """No such task, site, app, user or token; a ``cancel`` that cancelled nothing."""
    REFUSED = 4
    """Authentication or permission refused (bad token, not an admin)."""
    UNREACHABLE = 5
    """The controller cannot be reached, the connection broke or TLS failed, or a wait
    timed out."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT), as shells report it: the command stopped where it was (tasks it
    submitted or waited on are not cancelled)."""


def exit_code(exc: BaseException) -> Exit:
    """The exit code an error ends the command with (see :class:`Exit`)."""
    if isinstance(exc, NotFound):
        return Exit.NOT_FOUND
    if isinstance(exc, AuthError) or (isinstance(exc, InvalidRequest)
                                      and exc.code == "forbidden"):
        return Exit.REFUSED
    if isinstance(exc, ConnectionError_ | TimeoutError):
        return Exit.UNREACHABLE
    if isinstance(exc, ConfigError):
        return Exit.USAGE
    return Exit.FAILED


def fail(message: str, code: Exit) -> NoReturn:
    """End the command: ``error: MESSAGE`` on stderr, exit ``code``."""
    err.print("[red]error:[/red] ", end="", highlight=False)
    err.print(message, highlight=False, soft_wrap=True, markup=False)
    sys.exit(int(code))


def _run(fn: Callable[[], Awaitable[T]], *, until_interrupted: bool = False) -> T:
    """Run ``fn``; a Tidewater error or a timeout (alone or in a task group's group) ends
    the command with its message and its :class:`Exit` code, Ctrl-C with
    :attr:`Exit.INTERRUPTED` -- or, ``until_interrupted`` (``watch``, ``logs --follow``,
    ``top``: Ctrl-C is how they are left), with success."""
    try:
        return anyio.run(fn, backend_options=_loop_options())
    except KeyboardInterrupt:
        if until_interrupted:
            sys.exit(int(Exit.OK))
        err.print("interrupted", style="dim", highlight=False)
        sys.exit(int(Exit.INTERRUPTED))
    except (TidewaterError, TimeoutError) as exc:
        _fail_with(exc)
    except BaseExceptionGroup as group:
        match, rest = group.split((TidewaterError, TimeoutError))
        if match is None or rest is not None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        _fail_with(first)


def _fail_with(exc: BaseException) -> NoReturn:
    text = str(exc) or "timed out"
    err.print("[red]error:[/red] ", end="", highlight=False)
    err.print(text, highlight=False, soft_wrap=True, markup=False)
    sys.exit(int(exit_code(exc)))


class CliState:
    """The global options as given (flags), resolved on first use with the environment
    and the user's profile (:mod:`tidewater.profiles`). ``state["url"]``, ``["token"]``,
    ``["ca_file"]``, ``["site"]`` are the values a command connects with."""

    def __init__(self) -> None:
        self.flags: dict[str, str | None] = {}
        self.verbose = 0
        self._resolved: Resolved | None = None

    def set_flag(self, key: str, value: str | None) -> None:
        if value is not None:
            self.flags[key] = value
            self._resolved = None

    def resolved(self) -> Resolved:
        """Raises click.UsageError for a bad config file or an unknown profile."""
        if self._resolved is None:
            try:
                self._resolved = resolve(self.flags, os.environ, load_config(os.environ))
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        return self._resolved

    def __getitem__(self, key: str) -> str:
        r = self.resolved()
        if key == "token":
            try:
                return read_token(r)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        value: str = getattr(r, key).value
        return value


def state(ctx: click.Context) -> CliState:
    """The command's :class:`CliState` (made by the ``main`` group)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _client(ctx: click.Context) -> Client:
    o = state(ctx)
    timeouts = Timeouts(progress=float(os.environ.get("TIDEWATER_PROGRESS_INTERVAL", "30")))
    return Client(o["url"], o["token"] or _no_token(), name="cli", reconnect=False,
                  ca_file=o["ca_file"], on_notice=_notice, timeouts=timeouts)


def _no_token() -> NoReturn:
    raise click.UsageError("no token: give --token, set TIDEWATER_TOKEN, or run "
                           "`tidewater login URL` once (docs/cli.md)")


def _notice(n: Notice) -> None:
    """What a submit or a wait should know, on stderr (never mixed into the output)."""
    if n.trouble:
        err.print(f"[yellow]warning:[/yellow] {n.text}", highlight=False)
    else:
        err.print(n.text, style="dim", highlight=False)


def _kv(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    d: dict[str, str] = {}
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise click.BadParameter(f"{what} {p!r} must look like key=value")
        d[k] = v
    return d


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3] if t else "-"


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


class Duration(click.ParamType[float]):
    """A click type for durations in the one grammar of :mod:`tidewater.durations`:
    ``90``, ``30m``, ``1h30m``, ``1:30:00``, ``2-00:00:00``... -> seconds (float)."""

    name = "duration"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value), allow_zero=self.allow_zero)
        except DurationError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
DURATION_OR_ZERO = Duration(allow_zero=True)


LOG_FORMAT = click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    envvar="TIDEWATER_LOG_FORMAT",
    help="Log lines on stderr: text, or json (one object per line: time, level, logger, "
         "message, exception). Or TIDEWATER_LOG_FORMAT.")


def service_logging(fmt: str) -> None:
    """Logging of a long-running process: ``fmt`` lines, Tidewater's INFO at least."""
    from .logs import configure

    configure(fmt, logging.getLogger().level)
    logging.getLogger("tidewater").setLevel(min(logging.getLogger().level, logging.INFO))
