"""``tidewater server``, ``backup``, ``dev-cert`` and ``demo``: running and keeping a controller."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import anyio
import click

from .cli_base import DURATION, DURATION_OR_ZERO, LOG_FORMAT, _run, err, service_logging
from .config import ControllerConfig, Limits, Timeouts, default_db
from .errors import TidewaterError

# ---------------------------------------------------------------------- server


@click.command(short_help='Run a controller.')
@click.option("--db", default=default_db, show_default="~/.tidewater/tidewater.db",
              help="The store: a SQLite file (path or sqlite:///path) or "
                   "postgresql://user@host/db.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--lease-timeout", default=30.0, show_default=True, type=DURATION,
              help="Pilot silence before its tasks are retried.")
@click.option("--heartbeat", default=5.0, show_default=True, type=DURATION,
              help="Pilot heartbeat interval.")
@click.option("--disconnect-grace", default=None, type=DURATION_OR_ZERO,
              show_default="3 heartbeats, at most --lease-timeout",
              help="Time a pilot whose connection closed has to come back before its "
              "tasks are retried.")
@click.option("--max-frame-bytes", default=Limits().max_frame_bytes, show_default=True,
              type=int, help="Largest websocket frame accepted.")
@click.option("--max-tasks-per-submit", default=Limits().max_tasks_per_submit,
              show_default=True, type=int)
@click.option("--max-params-bytes", default=Limits().max_params_bytes, show_default=True,
              type=int, help="Largest parameters + tags + environment of one task.")
@click.option("--max-inline-bytes", default=None, type=int,
              show_default=f"{Limits().max_inline_bytes}, at most a quarter of --max-frame-bytes",
              help="Largest inline data of one task: its inline inputs together, "
              "a function's arguments or return value, an output sent back inline.")
@click.option("--max-requests-per-second", default=Limits().requests_per_second,
              show_default=True, type=float, help="Per client connection (bursts of 2 s worth).")
@click.option("--tls-cert", default="", type=click.Path(dir_okay=False),
              help="PEM certificate: serve wss:// (with --tls-key; see `tidewater dev-cert`).")
@click.option("--tls-key", default="", type=click.Path(dir_okay=False),
              help="PEM private key of --tls-cert.")
@click.option("--dashboard-port", type=int, default=None,
              help="Also serve the web dashboard on this port (docs/dashboard.md; off if not given).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True,
              help="The dashboard's listening address.")
@click.option("--allow-plaintext", is_flag=True,
              help="Serve ws:// on a non-loopback --host (only behind a TLS proxy or tunnel).")
@LOG_FORMAT
def server(db: str, host: str, port: int, lease_timeout: float, heartbeat: float,
           disconnect_grace: float | None, max_frame_bytes: int, max_tasks_per_submit: int, max_params_bytes: int,
           tls_cert: str, tls_key: str, allow_plaintext: bool,
           max_requests_per_second: float, max_inline_bytes: int | None,
           dashboard_port: int | None, dashboard_host: str, log_format: str) -> None:
    """Run a controller until SIGINT or SIGTERM (graceful; a second signal: at once).

    Several controllers may share one store: one leads, the others wait for
    its lock without listening, and take over when it goes.

    Outside loopback it serves TLS only: give --tls-cert and --tls-key.
    """
    from .controller import Server
    from .tls import check_listen

    service_logging(log_format)
    if max_inline_bytes is None:
        max_inline_bytes = max(1, min(Limits().max_inline_bytes, max_frame_bytes // 4))
    elif not 0 < max_inline_bytes <= max_frame_bytes // 4:
        raise click.UsageError(
            f"--max-inline-bytes must be between 1 and a quarter of --max-frame-bytes "
            f"({max_frame_bytes // 4}): a frame must hold at least one task's inline data")
    cfg = ControllerConfig(
        db=db, host=host, port=port,
        timeouts=Timeouts(lease_timeout=lease_timeout, heartbeat_interval=heartbeat,
                          disconnect_grace=disconnect_grace),
        limits=Limits(max_frame_bytes=max_frame_bytes,
                      max_tasks_per_submit=max_tasks_per_submit,
                      max_params_bytes=max_params_bytes, max_inline_bytes=max_inline_bytes,
                      requests_per_second=max_requests_per_second),
        tls_cert=tls_cert, tls_key=tls_key, allow_plaintext=allow_plaintext,
        dashboard_port=dashboard_port, dashboard_host=dashboard_host,
    )
    try:
        check_listen(cfg)
    except TidewaterError as exc:
        raise click.UsageError(str(exc)) from None

    async def go() -> None:
        srv = Server(cfg)
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                    async for signum in sigs:
                        name = signal.Signals(signum).name
                        if not srv.url or srv.stopping:
                            # A standby holds nothing; a second signal means now.
                            logging.getLogger("tidewater.controller").info(
                                "%s: stopping now", name)
                            tg.cancel_scope.cancel()
                            return
                        logging.getLogger("tidewater.controller").info(
                            "%s: shutting down gracefully (within %gs)", name, cfg.timeouts.close)
                        srv.stop()

            async def serve() -> None:
                await srv.run()
                tg.cancel_scope.cancel()

            tg.start_soon(on_signals)
            tg.start_soon(serve)

    _run(go)


@click.command("backup", short_help='Copy the store while the controller runs.')
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--db", default=default_db, show_default="~/.tidewater/tidewater.db",
              help="The store to copy: a SQLite file (path or sqlite:///path) or "
                   "postgresql://user@host/db.")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup(dest: str, db: str, force: bool) -> None:
    """Copy the store to DEST, consistently, while the controller runs.

    SQLite: an online backup into a new file (written aside, then renamed).
    PostgreSQL: `pg_dump -Fc` (needs pg_dump on PATH); restore with pg_restore.
    """
    from .controller.store.backup import backup as take

    done = _run(lambda: take(db, dest, force=force))
    err.print(f"copied {done.store} to {done.dest}: {done.tasks} tasks, "
              f"{done.size:,} bytes", highlight=False, soft_wrap=True)
    err.print(f"to restore: {done.restore}", highlight=False, soft_wrap=True)


@click.command("dev-cert", short_help='Make a development CA and TLS certificate.')
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", "hosts", multiple=True,
              help="Another name or IP the controller is reached by (repeatable).")
@click.option("--days", type=int, default=825, show_default=True, help="Validity.")
@click.option("--force", is_flag=True, help="Replace certificate files already there.")
def dev_cert(directory: str, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Make a development CA and a server certificate signed by it, in DIRECTORY.

    The certificate names localhost, 127.0.0.1, ::1, this machine's host name
    and every --host. The CA's private key is not kept: its ca.pem vouches for
    this server certificate only.
    """
    import datetime as dt
    import socket

    from .tls import CA_FILE, CERT_FILE, KEY_FILE, dev_cert_names, issue_dev_cert, write_dev_cert

    names = dev_cert_names(socket.gethostname(), hosts)
    try:
        made = issue_dev_cert(names, now=dt.datetime.now(dt.UTC), days=days)
        write_dev_cert(directory, made, force=force)
    except TidewaterError as exc:
        raise click.ClickException(str(exc)) from None
    d = Path(directory).expanduser().resolve()
    host = hosts[0] if hosts else socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"wrote {d / CA_FILE} (the CA: give it to clients, agents and pilots)\n"
        f"      {d / CERT_FILE} (the server certificate, for {', '.join(names)})\n"
        f"      {d / KEY_FILE} (its private key, mode 0600: keep it on the controller)\n"
        "serve TLS:\n"
        f"  tidewater server --host 0.0.0.0 --tls-cert {d / CERT_FILE} "
        f"--tls-key {d / KEY_FILE}\n"
        "connect, verifying the server:\n"
        f"  tidewater --url wss://{shown}:8765 --ca-file {d / CA_FILE} ...\n"
        f"  (or TIDEWATER_CA_FILE={d / CA_FILE}; a site agent: ca_file in its settings.toml)",
        highlight=False, soft_wrap=True,
    )


# ---------------------------------------------------------------------- demo


@click.command(short_help='Run the demo on this machine.')
@click.option("--frames", type=int, default=200, show_default=True,
              help="Detector frames to analyse.")
@click.option("--pilots", type=int, default=2, show_default=True)
@click.option("--cores", type=int, default=1, show_default=True, help="Cores per pilot.")
@click.option("--burst", type=int, default=200, show_default=True,
              help="No-op tasks run one at a time to measure the warm round trip.")
@click.option("--keep", type=click.Path(path_type=Path), default=None,
              help="Keep the store and outputs in this directory.")
def demo(frames: int, pilots: int, cores: int, burst: int, keep: Path | None) -> None:
    """Embedded controller + idle local site + pilots: frame analysis, then warm round trips."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise click.ClickException(
            "the demo's frame analysis needs scipy: pip install 'tidewater-hpc[demo]' "
            "(scripts/demo.sh installs it)")
    if frames < 1 or pilots < 1 or cores < 1 or burst < 0:
        raise click.ClickException("--frames, --pilots and --cores must be at least 1, "
                                   "--burst at least 0")
    from .demo import run_demo

    started = time.perf_counter()
    ok = anyio.run(lambda: run_demo(frames=frames, pilots=pilots, cores=cores, burst=burst,
                                    keep=keep))
    err.print(f"demo {'passed' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s "
              "(all of `tidewater demo`: controller, site, pilots, frames, burst, clean-up)",
              highlight=False)
    sys.exit(0 if ok else 1)
