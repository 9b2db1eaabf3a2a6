"""``tidewater submit``, ``ls``, ``show``, ``download``, ``watch``, ``cancel``: tasks."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.table import Table
from rich.text import Text

from .cli_base import DURATION, Exit, _client, _kv, _progress, _run, _when, err, out, state
from .errors import NotFound
from .proto import (
    FileInfo,
    Input,
    Output,
    Resources,
    Route,
    TaskInfo,
    TaskSpec,
)

INLINE_MAX = 1024 * 1024
"""Largest ``@LOCALFILE`` sent inline (the controller's default ``max_inline_bytes``)."""


def _url_problem(url: str) -> str | None:
    """What is wrong with a transfer URL, or None (the controller checks the same way)."""
    from .errors import TransferError
    from .urls import parse_url

    try:
        parse_url(url)
    except TransferError as exc:
        return exc.message
    return None


def _parse_input(value: str) -> Input:
    """``PATH=SOURCE`` -> Input; SOURCE is a URL, ``@LOCALFILE`` or ``task:ID:OUTPUT``.

    Reads a ``@LOCALFILE``. Raises click.BadParameter saying what is wrong.
    """
    path, eq, src = value.partition("=")
    if not eq or not path or not src:
        raise click.BadParameter(
            f"{value!r} must look like PATH=SOURCE, SOURCE a url (file://, sftp://, "
            "globus://), @LOCALFILE or task:ID:OUTPUT")
    if src.startswith("@"):
        local = Path(src[1:]).expanduser()
        try:
            size = local.stat().st_size
            if not local.is_file():
                raise click.BadParameter(f"{path}: {str(local)!r} is not a file")
            if size > INLINE_MAX:
                raise click.BadParameter(
                    f"{path}: {str(local)!r} is {size} bytes; files sent inline are at most "
                    f"1 MiB: give it a url instead ({path}=file://... or sftp://...)")
            return Input(path=path, data=local.read_bytes())
        except OSError as exc:
            raise click.BadParameter(
                f"{path}: cannot read {str(local)!r}: {exc.strerror or exc}") from None
    if src.startswith("task:"):
        tid, colon, output = src[5:].partition(":")
        if not colon or not tid.isdigit() or int(tid) <= 0 or not output:
            raise click.BadParameter(
                f"{path}: {src!r} must look like task:ID:OUTPUT (a task id and one of its "
                "outputs, e.g. task:12:result.h5)")
        return Input(path=path, task=int(tid), output=output)
    if "://" not in src:
        raise click.BadParameter(
            f"{path}: {src!r} is not a source: give a url (file:///abs/path, sftp://host/path, "
            f"globus://ENDPOINT/path), @LOCALFILE or task:ID:OUTPUT")
    problem = _url_problem(src)
    if problem:
        raise click.BadParameter(f"{path}: {problem} ({src!r})")
    return Input(path=path, url=src)


def _parse_output(value: str) -> Output:
    """``PATH`` or ``PATH=URL`` -> Output. Raises click.BadParameter."""
    path, eq, url = value.partition("=")
    if not path:
        raise click.BadParameter(f"{value!r} must look like PATH or PATH=URL")
    if eq:
        if not url:
            raise click.BadParameter(f"{value!r}: give a url after '=', or only PATH to "
                                     "keep the output with the task")
        problem = _url_problem(url)
        if problem:
            raise click.BadParameter(f"{path}: {problem} ({url!r})")
    return Output(path=path, url=url)


def _inputs_option(_ctx: click.Context, _param: click.Parameter,
                   values: tuple[str, ...]) -> list[Input]:
    return [_parse_input(v) for v in values]


def _outputs_option(_ctx: click.Context, _param: click.Parameter,
                    values: tuple[str, ...]) -> list[Output]:
    return [_parse_output(v) for v in values]


def _parents_option(_ctx: click.Context, _param: click.Parameter,
                    values: tuple[int, ...]) -> tuple[int, ...]:
    for v in values:
        if v <= 0:
            raise click.BadParameter(f"{v} is not a task id")
    return values



# ---------------------------------------------------------------------- tasks



@click.command(short_help='Submit tasks of an app.')
@click.option("--site", "site", multiple=True,
              help="A site; repeat it, or give 'any' (your sites with the app), and the "
                   "controller routes each task to one of them. Default: TIDEWATER_SITE or "
                   "the profile's site.")
@click.option("--policy", default="", metavar="POLICY",
              help="How to route among several sites: earliest-start (default), "
                   "shortest-backlog, round-robin.")
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable).")
@click.option("--priority", type=int, default=0)
@click.option("--cores", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cores per node.")
@click.option("--gpus", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPUs per node.")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes of one batch job (more than 1: an MPI task, through the site's "
                   "launcher).")
@click.option("--ranks-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="MPI ranks per node (more than 1: an MPI task).")
@click.option("--threads-per-rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads (cores) per rank.")
@click.option("--gpus-per-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPUs per rank.")
@click.option("--wall-time", type=DURATION, default=None,
              help="Estimated run time (30m, 1:30:00...): a pilot whose batch job ends "
                   "sooner does not start the task.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="An environment variable of the task (repeatable).")
@click.option("--workdir", default=None,
              help="The task's work directory, relative to the pilot's work root.")
@click.option("--timeout", type=DURATION, default=None,
              help="Kill the task after this long (90s, 30m, 1:00:00...).")
@click.option("--retries", type=int, default=3, show_default=True)
@click.option("--params-file", type=click.File("r"), default=None,
              help="JSON lines, one object of parameters per task: submit many at once.")
@click.option("--wait", is_flag=True, help="Wait for the tasks and show their results.")
@click.option("--args", "call_args", default=None,
              help="A function app's arguments as a JSON list (e.g. '[3, \"x\"]').")
@click.option("--input", "inputs", multiple=True, callback=_inputs_option,
              metavar="PATH=SOURCE",
              help="Put SOURCE at PATH in the task's directory before it runs: a url "
                   "(file://, sftp://, globus://), @LOCALFILE (sent inline, up to 1 MiB) or "
                   "task:ID:OUTPUT (another task's output). Repeatable.")
@click.option("--output", "outputs", multiple=True, callback=_outputs_option,
              metavar="PATH[=URL]",
              help="A file or directory the task leaves: sent to URL if given, else kept "
                   "(`tidewater download`). Repeatable.")
@click.option("--parent", "parents", multiple=True, type=int, callback=_parents_option,
              metavar="ID",
              help="A task that must finish first. Repeatable.")
@click.argument("app")
@click.argument("params", nargs=-1)
@click.pass_context
def submit(ctx: click.Context, site: tuple[str, ...], policy: str, tags: tuple[str, ...],
           priority: int, cores: int, gpus: int, nodes: int, ranks_per_node: int,
           threads_per_rank: int, gpus_per_rank: int, wall_time: float | None,
           env: tuple[str, ...], workdir: str | None, timeout: float | None, retries: int, params_file: Any, wait: bool,
           call_args: str | None, inputs: list[Input], outputs: list[Output],
           parents: tuple[int, ...], app: str, params: tuple[str, ...]) -> None:
    """Submit APP with PARAMS (name=value ...); prints the task ids.

    --input, --output and --parent apply to every task (also with --params-file).
    With --wait, exits 1 if a task did not finish (docs/cli.md: exit codes).
    """
    from . import codec

    blob = b""
    if call_args is not None:
        try:
            values = json.loads(call_args)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"--args: {exc}") from None
        if not isinstance(values, list):
            raise click.BadParameter("--args must be a JSON list")
        blob = codec.encode_call(tuple(values), {})
    base: dict[str, Any] = dict(_kv(params, "parameter"))
    rows: list[dict[str, Any]] = [base]
    if params_file is not None:
        try:
            rows = [{**base, **json.loads(line)} for line in params_file if line.strip()]
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"--params-file: {exc}") from None
    from .client_specs import route_fields

    if not site:
        default = state(ctx)["site"]
        if not default:
            raise click.UsageError("give --site (or set TIDEWATER_SITE, or a site in your "
                                   "profile: `tidewater login URL --site NAME`)")
        site = (default,)
    resources = Resources(cores=cores, gpus=gpus, num_nodes=nodes,
                          ranks_per_node=ranks_per_node, threads_per_rank=threads_per_rank,
                          gpus_per_rank=gpus_per_rank)
    environment = _kv(env, "--env")

    where = route_fields(site[0] if len(site) == 1 else list(site), policy)
    specs = [TaskSpec(app=app, **where, params=r, tags=_kv(tags, "tag"), priority=priority,
                      resources=resources, timeout=timeout, wall_time=wall_time,
                      env=environment, workdir=workdir, max_retries=retries, args=blob, inputs=inputs, outputs=outputs,
                      parents=list(parents)) for r in rows]

    async def go() -> int:
        async with _client(ctx) as c:
            if len(specs) == 1 and not wait:
                (task,) = await c.submit_many(specs, push_results=False)
                click.echo(task.id)
                return Exit.OK
            with _progress() as bar:
                sub = bar.add_task("submitted", total=len(specs))
                tasks = await c.submit_many(specs, progress=lambda n: bar.advance(sub, n),
                                            push_results=wait)
                if not wait:
                    for t in tasks:
                        click.echo(t.id)
                    return Exit.OK
                done = bar.add_task("finished ", total=len(tasks))
                infos: list[TaskInfo] = []
                async for info in c.as_completed(tasks):
                    infos.append(info)
                    bar.advance(done)
            bad = [i for i in infos if i.state != "JOB_FINISHED"]
            if len(infos) == 1:
                _show(infos[0])
            else:
                _table(sorted(infos, key=lambda i: i.id)[-50:])
                err.print(f"{len(infos) - len(bad)} finished, {len(bad)} did not")
            return Exit.FAILED if bad else Exit.OK

    sys.exit(_run(go))


def _show(i: TaskInfo) -> None:
    out.print(f"task {i.id} [bold]{i.state}[/bold] app={i.app} site={i.site} "
              f"exit={i.exit_code} attempt={i.attempt}")
    if i.error:
        out.print(f"error: {i.error}")
    if i.started_at and i.finished_at:
        out.print(f"queued {i.started_at - i.created_at:.3f}s, ran {i.finished_at - i.started_at:.3f}s")
    if i.result is not None:
        from . import codec

        try:
            shown = repr(codec.decode(i.result))
        except ValueError as exc:
            shown = f"(cannot decode: {exc})"
        out.print(f"result: {shown[:2000]}", markup=False, highlight=False)
    if i.files:
        _files(i.files)
    for r in i.routes:
        _route(r)
    if i.stdout_tail:
        out.print("--- stdout (tail) ---", style="dim")
        out.print(i.stdout_tail, end="" if i.stdout_tail.endswith("\n") else "\n", markup=False,
                  highlight=False)
    if i.stderr_tail:
        out.print("--- stderr (tail) ---", style="dim")
        out.print(i.stderr_tail, end="" if i.stderr_tail.endswith("\n") else "\n", markup=False,
                  highlight=False)


def _secs(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}s"


def _route(r: Route) -> None:
    out.print(f"routed to {r.chosen} by {r.policy} at {_when(r.time)}"
              + (f" ({r.reason})" if r.reason else ""), highlight=False)
    table = Table(box=None, pad_edge=False)
    for col in ("site", "health", "est. start", "est. finish", "backlog", "transfer", "run",
                "note"):
        table.add_column(col)
    for e in r.candidates:
        table.add_row(("* " if e.site == r.chosen else "  ") + e.site, e.health,
                      _secs(e.start), _secs(e.finish), str(e.backlog), _secs(e.transfer),
                      _secs(e.run), e.note)
    out.print(table)


def _files(files: list[FileInfo]) -> None:
    """A task's inputs and outputs: where each comes from or goes, and what became of it."""
    table = Table("dir", "path", "state", "size", "url / source", "sha256", "error")
    for f in files:
        if f.url:
            where = f.url
        elif f.task:
            where = f"task:{f.task}:{f.output}"
        else:
            where = "inline" if f.direction == "in" else "-"
        table.add_row(f.direction, Text(f.path), f.state, "" if f.size is None else str(f.size),
                      Text(where), f.sha256[:12], Text(f.error))
    out.print(table)


def _table(infos: list[TaskInfo]) -> None:
    table = Table("id", "app", "site", "state", "exit", "tags", "created", "ran (s)")
    for i in infos:
        ran = f"{i.finished_at - i.started_at:.3f}" if i.started_at and i.finished_at else ""
        table.add_row(str(i.id), i.app, i.site, i.state, "" if i.exit_code is None else
                      str(i.exit_code), ",".join(f"{k}={v}" for k, v in i.tags.items()),
                      _when(i.created_at), ran)
    out.print(table)


@click.command("ls")
@click.option("--state", "states", multiple=True, help="Only tasks in this state (repeatable).")
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable, all must match).")
@click.option("--site", default=None)
@click.option("--app", "app_name", default=None)
@click.option("--last", "last", type=DURATION, default=None,
              help="Only tasks created in the last LAST (1h, 2d, 30m...).")
@click.option("--limit", type=int, default=100, show_default=True,
              help="Show the most recent LIMIT matching tasks.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def ls(ctx: click.Context, states: tuple[str, ...], tags: tuple[str, ...], site: str | None,
       app_name: str | None, last: float | None, limit: int, as_json: bool) -> None:
    """List tasks."""
    since = None if last is None else time.time() - last

    async def go() -> list[TaskInfo]:
        async with _client(ctx) as c:
            return await c.tasks(state=list(states), tags=_kv(tags, "tag"), site=site,
                                 app=app_name, limit=limit, newest=True, since=since)

    infos = _run(go)
    if as_json:
        for i in infos:
            click.echo(msgspec.json.encode(i).decode())
    else:
        _table(infos)


@click.command()
@click.argument("task_id", type=int)
@click.option("--wait", is_flag=True,
              help="Wait until the task is final; exit 1 unless it finished.")
@click.option("--json", "as_json", is_flag=True, help="The task as one JSON object.")
@click.pass_context
def show(ctx: click.Context, task_id: int, wait: bool, as_json: bool) -> None:
    """Show one task, with the tail of its output.

    Exits 3 for an unknown task; with --wait, 1 if it failed or was killed.
    """

    async def go() -> TaskInfo:
        async with _client(ctx) as c:
            found = await c.tasks(ids=[task_id])
            if not found:
                raise NotFound(f"no task with id {task_id}")
            if wait:
                (info,) = await c.wait([task_id])
                return info
            return found[0]

    info = _run(go)
    if as_json:
        click.echo(msgspec.json.encode(info).decode())
    else:
        _show(info)
    if wait and info.state != "JOB_FINISHED":
        sys.exit(Exit.FAILED)


@click.command(short_help="Write a task's output to a file.")
@click.argument("task_id", type=int)
@click.argument("name")
@click.argument("dest", default=".", type=click.Path(path_type=Path))
@click.pass_context
def download(ctx: click.Context, task_id: int, name: str, dest: Path) -> None:
    """Write output NAME of a finished task to DEST (a file, or a directory to put it in;
    default: here). Prints the path written and its size."""

    async def go() -> Path:
        async with _client(ctx) as c:
            try:
                return await c.download(task_id, name, dest)
            except OSError as exc:
                raise click.ClickException(f"cannot write {str(dest)!r}: "
                                           f"{exc.strerror or exc}") from None

    path = _run(go)
    click.echo(f"{path}\t{path.stat().st_size} bytes")


@click.command()
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable).")
@click.option("--id", "ids", multiple=True, type=int)
@click.option("--state", "states", multiple=True)
@click.option("--site", default=None)
@click.option("--since", type=int, default=0, help="Replay events after this event id first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_context
def watch(ctx: click.Context, tags: tuple[str, ...], ids: tuple[int, ...],
          states: tuple[str, ...], site: str | None, since: int, as_json: bool) -> None:
    """Print task events as they happen."""

    async def go() -> None:
        async with _client(ctx) as c:
            async with c.watch(tags=_kv(tags, "tag"), ids=list(ids), states=list(states),
                               site=site, since_event=since) as events:
                async for e in events:
                    if as_json:
                        click.echo(msgspec.json.encode(e).decode())
                        continue
                    out.print(f"{_when(e.time)} #{e.id} task {e.task_id} "
                              f"{e.from_state} -> [bold]{e.to_state}[/bold]"
                              + (f" {e.data}" if e.data else ""), highlight=False)

    _run(go, until_interrupted=True)
