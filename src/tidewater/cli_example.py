"""``tidewater example federation``: the federation experiment at laptop scale
(:mod:`tidewater.examples.federation`), with its data served by a real sshd."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import click

from .cli_base import DURATION_OR_ZERO, _run, err, out


@click.group()
def example() -> None:
    """Examples that run end to end on this machine."""


@example.command("federation", short_help='Stream XPCS analyses to three sites.')
@click.option("--tasks", type=click.IntRange(min=3), default=24, show_default=True,
              help="Tasks in the stream (the two instruments take turns), run once per policy.")
@click.option("--frames", type=click.IntRange(min=20), default=200, show_default=True,
              help="Frames per simulated stack.")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True,
              help="Frame width and height in pixels.")
@click.option("--interval", type=DURATION_OR_ZERO, default=0.5, show_default=True,
              help="Seconds between two submissions of the stream.")
@click.option("--policy", "policies", multiple=True,
              type=click.Choice(["earliest-start", "shortest-backlog", "round-robin"]),
              help="Only these policies (repeatable; default: all three, in this order).")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Draw throughput and utilisation per policy (PNG) into this directory "
                   "(needs the plots extra: matplotlib).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the store, sites, stacks and results here (default: a temporary "
                   "directory, removed at the end).")
def federation(tasks: int, frames: int, size: int, interval: float,
               policies: tuple[str, ...], plots: Path | None, keep: Path | None) -> None:
    """Two instruments stream XPCS analyses to three sites, once per routing policy.

    An embedded controller; three sites (fast, medium, slow), each with its own agent,
    local scheduler (with a start delay: a batch queue's wait), pilots and work root;
    two clients (aps, als), each with a data directory of simulated HDF5 speckle stacks
    served over SFTP. Each task stages its stack in, computes g2 with xpcs-correlator,
    checks the fitted correlation time and stages g2.h5 out. Prints each policy's
    latency table per route and a comparison; exits 1 if a task or a route was wrong.

    Needs the xpcs extra (pip install 'tidewater-hpc[xpcs]') and OpenSSH's sshd
    (/usr/sbin/sshd: `sudo scripts/services.sh install`, or apt-get install
    openssh-server); sshd runs as you on a loopback port, key authentication only.
    About a minute per policy at the defaults on 2 cores (docs/federation.md).
    """
    missing = [m for m in ("h5py", "xpcscorr", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"the XPCS analysis needs {', '.join(missing)}: "
                                   "pip install 'tidewater-hpc[xpcs]'")
    if plots is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.ClickException("--plots needs matplotlib: pip install 'tidewater-hpc[plots]'")
    from .examples import federation as fed
    from .examples.sshd import SSHD, start_sshd

    with tempfile.TemporaryDirectory(prefix="tidewater-federation-") as tmp:
        base = (keep or Path(tmp)).resolve()
        base.mkdir(parents=True, exist_ok=True)
        try:
            server_cm = start_sshd(base / "sshd")
            server = server_cm.__enter__()
        except (FileNotFoundError, RuntimeError) as exc:
            raise click.ClickException(f"the instruments' data are served over SFTP by "
                                       f"{SSHD}, which did not start: {exc}") from None
        try:
            sftp = {"sftp_identity": str(server.identity),
                    "sftp_known_hosts": str(server.known_hosts)}
            result = _run(lambda: fed.run(
                base=base, sftp_url=server.url, sftp=sftp, tasks=tasks, frames=frames,
                size=size, interval=interval, policies=policies or fed.POLICIES,
                plots=plots, console=out))
        finally:
            server_cm.__exit__(None, None, None)
    if result.problems:
        err.print(f"[red]{len(result.problems)} problems[/red]", highlight=False)
        sys.exit(1)
