"""What every ``tidewater`` command shares: the consoles, the client, the runner."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .client import Client
from .config import Timeouts
from .errors import TidewaterError
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


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn``; a Tidewater error (alone or in a task group's group) ends with a message."""
    try:
        return anyio.run(fn, backend_options=_loop_options())
    except TidewaterError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except BaseExceptionGroup as group:
        match, rest = group.split(TidewaterError)
        if match is None or rest is not None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        err.print(f"[red]error:[/red] {first}", highlight=False, soft_wrap=True)
        sys.exit(1)


def _client(ctx: click.Context) -> Client:
    o = ctx.obj
    timeouts = Timeouts(progress=float(os.environ.get("TIDEWATER_PROGRESS_INTERVAL", "30")))
    return Client(o["url"], o["token"], name="cli", reconnect=False, ca_file=o["ca_file"],
                  on_notice=_notice, timeouts=timeouts)


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
