"""``tidewater site``, ``queue`` and ``pilot``: where tasks run, batch jobs and pilots."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec
from rich.table import Table
from rich.text import Text

from .cli_base import (
    DURATION,
    DURATION_OR_ZERO,
    LOG_FORMAT,
    _client,
    _kv,
    _run,
    _when,
    err,
    out,
    service_logging,
)
from .config import Timeouts
from .durations import format_ago, wall_minutes
from .errors import TidewaterError

# ---------------------------------------------------------------------- sites and apps


@click.group()
def site() -> None:
    """Sites: where tasks run."""


@site.command("add", short_help='Create a site and print its token.')
@click.argument("name")
@click.pass_context
def site_add(ctx: click.Context, name: str) -> None:
    """Create a site and print its token (for its pilots and agent; shown once)."""

    async def go() -> str:
        async with _client(ctx) as c:
            _info, token = await c.add_site(name)
            return token

    token = _run(go)
    err.print(f"site {name!r} created; its token (keep it secret, it is not stored):")
    click.echo(token)


@site.command("ls", short_help='List your sites, their health and pilots.')
@click.option("--pilots", is_flag=True, help="Also list every pilot, with when it was last heard.")
@click.option("--json", "json_out", is_flag=True, help="JSON, for scripts.")
@click.pass_context
def site_ls(ctx: click.Context, pilots: bool, json_out: bool) -> None:
    """List your sites: health (up, degraded, down) and why, agent, pilots, capacity."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.sites()

    sites = _run(go)
    if json_out:
        click.echo(msgspec.json.encode(sites).decode())
        return
    table = Table("site", "health", "agent", "batch jobs", "pilots", "cores", "gpus",
                  "last heard", "why")
    now = time.time()
    for s in sites:
        style = {"up": "green", "degraded": "yellow", "down": "red"}.get(s.health, "")
        heard = max(s.agent_seen, s.pilot_seen)
        table.add_row(s.name, Text(s.health, style=style), "connected" if s.agent else "-",
                      str(s.batch_jobs), str(s.pilots), str(s.cores), str(s.gpus),
                      format_ago(heard, now) if heard else "-", Text(s.health_reason))
    out.print(table)
    if pilots:
        ptable = Table("site", "pilot", "host", "connected", "running", "cores", "gpus",
                       "batch job", "last heard")
        for s in sites:
            for p in s.pilot_list:
                ptable.add_row(s.name, p.pilot_id, p.hostname,
                               "yes" if p.connected else "no (lease running)",
                               str(p.running), str(p.cores), str(p.gpus),
                               str(p.batch_job or "-"),
                               format_ago(p.last_seen, now) if p.last_seen else "-")
        out.print(ptable)


@site.command("init", short_help='Write a site directory for its agent.')
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="The site's name (created on the controller if new).")
@click.option("--scheduler", type=click.Choice(["slurm", "pbs", "lsf", "cobalt", "local"]),
              required=True)
@click.option("--site-token", default="", envvar="TIDEWATER_SITE_TOKEN",
              help="Token of an existing site (default: create the site with your user token).")
@click.option("--option", "options", multiple=True,
              help="key=value option of the scheduler adapter (repeatable).")
@click.pass_context
def site_init(ctx: click.Context, directory: str, name: str, scheduler: str, site_token: str,
              options: tuple[str, ...]) -> None:
    """Write a site directory: settings.toml, job-template.sh and the site token."""
    from .agents.settings import init_site

    token = site_token
    if not token:
        async def go() -> str:
            async with _client(ctx) as c:
                _info, t = await c.add_site(name)
                return t

        token = _run(go)
    try:
        ca = ctx.obj["ca_file"]
        d = init_site(directory, name=name, scheduler=scheduler, controller=ctx.obj["url"],
                      token=token, options=_kv(options, "option"),
                      ca_file=str(Path(ca).expanduser().resolve()) if ca else "")
    except TidewaterError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"site {name!r} ({scheduler}) set up in {d}; edit {d / 'settings.toml'} "
              f"and {d / 'job-template.sh'}, then run `tidewater site start {directory}`")


@site.command("start", short_help="Run the site's agent.")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@LOG_FORMAT
def site_start(directory: str, log_format: str) -> None:
    """Run the site's agent: batch jobs on its scheduler, until SIGINT or SIGTERM.

    Stopping leaves the batch jobs (and the pilots in them) running; started
    again, the agent adopts them.
    """
    from .agents.settings import load
    from .agents.site import Agent

    service_logging(log_format)
    try:
        settings = load(directory)
        agent = Agent(settings)
    except TidewaterError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.run)
            # A log record, not a console line: with --log-format json every line is JSON.
            logging.getLogger("tidewater.agent").info(
                "agent of site %r connected to %s (%s)", settings.site.name,
                settings.site.controller, settings.site.scheduler)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    # Batch jobs are left running: a restarted agent adopts them.
                    with anyio.move_on_after(
                            settings.site.scheduler_timeout + Timeouts().close + 5):
                        await agent.stop(f"{signal.Signals(signum).name} received")
                    tg.cancel_scope.cancel()
                    return

    _run(go)


# ---------------------------------------------------------------------- batch jobs


@click.group()
def queue() -> None:
    """Batch jobs: pilots on a site's scheduler."""


@queue.command("submit", short_help='Ask a site for a batch job.')
@click.option("--site", required=True)
@click.option("--nodes", type=int, default=1, show_default=True)
@click.option("--wall-time", type=DURATION, default="30m", show_default=True,
              help="30m, 1h30m, 1:30:00 or 1-00:00:00 (rounded up to minutes).")
@click.option("--queue", "queue_", default="", help="Queue or partition.")
@click.option("--project", default="", help="Project or account to charge.")
@click.pass_context
def queue_submit(ctx: click.Context, site: str, nodes: int, wall_time: float, queue_: str,
                 project: str) -> None:
    """Ask SITE's agent for a batch job; prints its id."""
    minutes = wall_minutes(wall_time)

    async def go() -> Any:
        async with _client(ctx) as c:
            return await c.queue_submit(site, nodes=nodes, wall_time_min=minutes, queue=queue_,
                                        project=project)

    job = _run(go)
    click.echo(job.id)


@queue.command("ls", short_help='List batch jobs.')
@click.option("--site", default=None)
@click.option("--all", "all_", is_flag=True, help="Include finished jobs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_ls(ctx: click.Context, site: str | None, all_: bool, as_json: bool) -> None:
    """List batch jobs: scheduler id, state, nodes, start and end."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.queue(site=site, include_finished=all_)

    jobs = _run(go)
    if as_json:
        for j in jobs:
            click.echo(msgspec.json.encode(j).decode())
        return
    table = Table("id", "site", "scheduler id", "state", "nodes", "wall", "queue", "pilots",
                  "started", "ended", "note")
    for j in jobs:
        note = j.error or j.flagged or j.reason
        table.add_row(str(j.id), j.site, j.scheduler_id or "-", j.state, str(j.nodes),
                      f"{j.wall_time_min}m", j.queue or "-", str(j.pilots),
                      _when(j.started_at), _when(j.ended_at), note)
    out.print(table)


@queue.command("cancel", short_help='Cancel a batch job.')
@click.argument("job_id", type=int)
@click.pass_context
def queue_cancel(ctx: click.Context, job_id: int) -> None:
    """Cancel a batch job (its agent removes it from the scheduler)."""

    async def go() -> None:
        async with _client(ctx) as c:
            await c.queue_cancel(job_id)

    _run(go)
    err.print(f"batch job {job_id}: cancel requested")


# ---------------------------------------------------------------------- pilot


@click.command(short_help='Run a pilot on this machine.')
@click.option("--site", default="", help="Site name (implied by a site token).")
@click.option("--cores", type=int, default=lambda: os.cpu_count() or 1,
              show_default="all cores")
@click.option("--gpus", type=int, default=0, show_default=True)
@click.option("--prefetch", type=int, default=2, show_default=True,
              help="Extra cores' worth of tasks kept queued locally.")
@click.option("--workdir", default="", help="Root of task work directories.",
              show_default="~/.tidewater/work")
@click.option("--pilot-id", default="", help="Stable id (default: host + random).")
@click.option("--heartbeat", type=DURATION, default=5.0, show_default=True,
              help="Heartbeat interval.")
@click.option("--token-file", default="", help="Read the token from this file (re-read on reconnect).")
@click.option("--batch-job", type=int, default=0,
              help="The batch job this pilot runs in (its nodes and end time are discovered).")
@click.option("--idle-timeout", type=DURATION, default=None, help="Exit after this long idle.")
@click.option("--wall-margin", type=DURATION_OR_ZERO, default=30.0, show_default=True,
              help="Time before the batch job's end to stop taking and running tasks.")
@click.option("--drain-timeout", type=DURATION_OR_ZERO, default=Timeouts().drain,
              show_default=True,
              help="On SIGTERM/SIGINT, seconds running tasks may finish before they are "
              "killed and handed back (a second signal: at once).")
@click.option("--launcher", default="", help="MPI launcher for multi-rank tasks "
              "(mpiexec, cray-mpiexec, mpirun, srun, aprun, jsrun).")
@click.option("--head", is_flag=True, help="Head mode: serve every node of the batch job, "
              "launching every task through --launcher.")
@click.option("--relay", envvar="TIDEWATER_RELAY", default="", metavar="HOST:PORT",
              help="Connect through the site agent's relay at HOST:PORT (compute nodes that "
              "cannot reach the controller); TLS and the token still go to the controller. "
              "Or TIDEWATER_RELAY.")
@click.pass_context
@LOG_FORMAT
def pilot(ctx: click.Context, site: str, cores: int, gpus: int, prefetch: int, workdir: str,
          pilot_id: str, heartbeat: float, token_file: str, batch_job: int,
          idle_timeout: float | None, wall_margin: float, drain_timeout: float, launcher: str,
          head: bool, relay: str, log_format: str) -> None:
    """Run a pilot on this machine: it runs the site's tasks until stopped.

    SIGTERM or SIGINT: it takes no more work, hands back what has not started,
    lets running tasks finish for up to --drain-timeout seconds, hands back
    what still runs, and exits 0. A second signal skips the wait.
    """
    import socket

    from .pilot import PilotConfig, run_pilot
    from .pilot.nodes import Node, discover

    service_logging(log_format)
    o = ctx.obj
    if not o["token"] and not token_file:
        raise click.UsageError("a pilot needs a token: set TIDEWATER_TOKEN, --token or --token-file")
    if relay:
        from .transport import format_address, parse_address
        try:
            relay = format_address(*parse_address(relay, "--relay"))
        except TidewaterError as exc:
            raise click.BadParameter(str(exc), param_hint="--relay") from None
    explicit = ctx.get_parameter_source("cores") == click.core.ParameterSource.COMMANDLINE
    host = socket.gethostname()
    end_time = None
    head_nodes = []
    if batch_job:
        try:
            alloc = discover(os.environ, read_file=lambda f: Path(f).read_text(), hostname=host,
                             local_cores=cores, local_gpus=gpus, now=time.time())
        except TidewaterError as exc:
            raise click.UsageError(f"cannot read the batch job's allocation: {exc}") from None
        end_time = alloc.end_time
        if head:
            # The scheduler's slot counts may not be the nodes' cores (LSF, Cobalt): the
            # site's configured node shape wins when given.
            explicit_gpus = ctx.get_parameter_source("gpus") == click.core.ParameterSource.COMMANDLINE
            head_nodes = [
                Node(n.host, cores if explicit else n.cores, gpus if explicit_gpus else n.gpus)
                for n in alloc.nodes
            ]
        else:
            mine = [n for n in alloc.nodes if n.host.split(".")[0] == host.split(".")[0]]
            if mine and not explicit:
                cores, gpus = mine[0].cores, mine[0].gpus
        index = next((os.environ[v] for v in ("TIDEWATER_NODE_INDEX", "SLURM_PROCID", "PMI_RANK")
                      if v in os.environ), "0")
        pilot_id = pilot_id or f"job{batch_job}-{host}-{index}-{os.urandom(3).hex()}"
    cfg = PilotConfig(url=o["url"], token=o["token"], site=site, cores=cores, gpus=gpus,
                      prefetch=prefetch, workdir=workdir, pilot_id=pilot_id,
                      timeouts=Timeouts(heartbeat_interval=heartbeat, drain=drain_timeout),
                      token_file=token_file,
                      batch_job=batch_job, end_time=end_time, wall_margin=wall_margin,
                      idle_timeout=idle_timeout, launcher=launcher or None, head_nodes=head_nodes,
                      ca_file=o["ca_file"], relay=relay)
    _run(lambda: run_pilot(cfg))
