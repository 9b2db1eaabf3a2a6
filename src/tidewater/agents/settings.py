# mypy: disable-error-code="misc"
"""A site directory: its settings file, batch-script template and token.

``tidewater site init DIR`` writes::

    DIR/settings.toml      what the agent does (scheduler, limits, autoscaler)
    DIR/job-template.sh    the batch script's body: environment setup + pilot launch
    DIR/token              the site token (mode 0600)
    DIR/jobs/<id>/         one directory per batch job: script, output, pilot token

Rendering the body is pure (:func:`render_body`); the scheduler adapter adds
its directives in front of it.
"""

from __future__ import annotations

import os
import shlex
import socket
import string
import sys
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from ..config import Timeouts
from ..errors import ConfigError
from ..tomlw import toml_key, toml_string
from ..transport import controller_urls, format_address, parse_address

WILDCARD_HOSTS = ("0.0.0.0", "::", "*")

SCHEDULERS = ("slurm", "pbs", "lsf", "cobalt", "local")
DEFAULT_LAUNCHER = {
    "slurm": "srun", "pbs": "mpiexec", "lsf": "jsrun", "cobalt": "aprun", "local": "mpiexec",
}


class SiteSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    controller: str | list[str] = "ws://127.0.0.1:8765"
    """The controller's URL; several (a list, or one string separated by commas) when a
    standby shares the leader's store: the agent and its pilots follow whichever leads."""
    token_file: str = "token"
    ca_file: str = ""
    """CA certificate a ``wss://`` controller is verified against ("": system trust store)."""
    scheduler: str = "local"
    mode: Literal["node", "head"] = "node"
    launcher: str = ""
    work_root: str = "work"
    python: str = ""
    poll_interval: float = 10.0
    cores_per_node: int = 0
    gpus_per_node: int = 0
    pilot_idle_timeout: float = 60.0
    pilot_prefetch: int = 2
    heartbeat_interval: float = 5.0
    wall_time_margin: float = 30.0
    """Pilots stop taking tasks, and end what runs, this long before the job's wall time."""
    pilot_drain_timeout: float = Timeouts().drain
    """A pilot sent SIGTERM (its job cancelled) lets running tasks finish this long before
    handing them back: keep it below the scheduler's SIGTERM -> SIGKILL grace (Slurm's
    KillWait, 30 s by default)."""
    scheduler_timeout: float = 60.0


class JobSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    queue: str = ""
    project: str = ""
    wall_time_min: int = 30
    directives: list[str] = []


class LimitsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    queues: list[str] = []
    projects: list[str] = []
    max_nodes_per_job: int = 0
    max_wall_time_min: int = 0


class AutoscaleSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    max_queued_jobs: int = 1
    max_total_nodes: int = 4
    min_nodes_per_job: int = 1
    max_nodes_per_job: int = 1
    wall_time_min: int = 0
    """0: the [job] wall time."""
    retry_after: float = 30.0


class TransfersSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the agent moves tasks' inputs and outputs (see docs/data.md)."""

    max_concurrency: int = 4
    """Items moved at once per remote (one SFTP server, one Globus endpoint pair)."""
    max_batch: int = 64
    """Items handed to a backend in one batch (one connection, one Globus task)."""
    retries: int = 3
    """Further attempts after a failed one, with exponential backoff."""
    retry_delay: float = 1.0
    """Seconds before the first retry; doubles each time, up to 60 s."""
    checksum: bool = True
    """Compute the SHA-256 of what lands (and compare with an item's expected one)."""
    file_link: bool = False
    """file:// inputs on the work root's filesystem are hard-linked instead of copied."""
    sftp_identity: str = ""
    """Private key for sftp:// ("": the user's ~/.ssh keys and agent)."""
    sftp_known_hosts: str = ""
    """known_hosts for sftp:// host keys ("": ~/.ssh/known_hosts). Checking is always on."""
    sftp_connect_timeout: float = 15.0
    globus_endpoint: str = ""
    """This site's own Globus collection id, through which the work root is reached."""
    globus_work_root: str = ""
    """The work root's path as that collection sees it ("": the same as work_root)."""
    globus_token_file: str = ""
    """A Globus Transfer access token, read at each batch (mode 0600)."""
    globus_base_url: str = ""
    """The Transfer API's address ("": Globus's own)."""
    globus_poll_interval: float = 2.0


class RelaySection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The agent's relay for pilots whose compute nodes cannot reach the controller
    (see :mod:`.relay` and docs/sites.md). Off while ``listen`` is empty."""

    listen: str = ""
    """``HOST:PORT`` the agent listens on for its pilots, e.g. ``0.0.0.0:7700``."""
    advertise: str = ""
    """``HOST:PORT`` the pilots dial ("": the listening address, or this host's name when
    that is every interface, with the listening port)."""
    max_connections: int = 256
    """Relayed connections at once; more are refused until one ends."""
    connect_timeout: float = 10.0
    """Seconds for a pilot's request and for reaching the controller."""


class SiteSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    site: SiteSection
    scheduler: dict[str, str | int | float | bool] = {}
    job: JobSection = JobSection()
    limits: LimitsSection = LimitsSection()
    autoscale: AutoscaleSection = AutoscaleSection()
    transfers: TransfersSection = TransfersSection()
    relay: RelaySection = RelaySection()
    directory: str = ""
    """Where the settings were read from (set by :func:`load`)."""

    def path(self, p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else Path(self.directory) / q

    def ca_file(self) -> str | None:
        """The CA file for the controller's certificate, resolved; None: the system store."""
        return str(self.path(self.site.ca_file)) if self.site.ca_file else None

    @property
    def launcher(self) -> str:
        return self.site.launcher or DEFAULT_LAUNCHER.get(self.site.scheduler, "mpiexec")

    def relay_address(self, hostname: str) -> str | None:
        """``HOST:PORT`` this site's pilots connect through (None: the relay is off).

        ``relay.advertise`` if set, else the listening address, with ``hostname``
        (this host's name) for a wildcard host such as ``0.0.0.0``.
        """
        if not self.relay.listen:
            return None
        if self.relay.advertise:
            return self.relay.advertise.strip()
        host, port = parse_address(self.relay.listen, "relay.listen")
        return format_address(hostname if host in WILDCARD_HOSTS else host, port)


def load(directory: str | Path) -> SiteSettings:
    """Read ``DIR/settings.toml``; ConfigError says what is wrong and where."""
    d = Path(directory).expanduser().resolve()
    f = d / "settings.toml"
    try:
        raw = tomllib.loads(f.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{f} not found: create it with `tidewater site init {directory}`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{f}: {exc}") from None
    try:
        s = msgspec.convert(raw, SiteSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{f}: {exc}") from None
    try:
        controller_urls(s.site.controller)
    except ConfigError as exc:
        raise ConfigError(f"{f}: site.controller: {exc}") from None
    if s.site.scheduler not in SCHEDULERS:
        raise ConfigError(f"{f}: scheduler {s.site.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    try:
        check_relay(s.relay)
    except ConfigError as exc:
        raise ConfigError(f"{f}: {exc}") from None
    return msgspec.structs.replace(s, directory=str(d))


def check_relay(r: RelaySection) -> None:
    """Raise :class:`ConfigError` saying which ``[relay]`` setting is wrong, and how."""
    if not r.listen:
        if r.advertise:
            raise ConfigError("relay.advertise is set but relay.listen is not: set listen "
                              '(e.g. "0.0.0.0:7700") to turn the relay on')
        return
    host, _port = parse_address(r.listen, "relay.listen")
    if host == "*":
        raise ConfigError('relay.listen: write "0.0.0.0:PORT" (or "[::]:PORT") for every '
                          "interface")
    if r.advertise:
        adv, _ = parse_address(r.advertise, "relay.advertise")
        if adv in WILDCARD_HOSTS:
            raise ConfigError(f"relay.advertise {r.advertise!r}: pilots need an address to "
                              "dial, not a wildcard: give the login node's name or address")
    if r.max_connections < 1:
        raise ConfigError(f"relay.max_connections = {r.max_connections}: must be at least 1")
    if not r.connect_timeout > 0:
        raise ConfigError(f"relay.connect_timeout = {r.connect_timeout:g}: must be more "
                          "than 0 seconds")


def read_token(s: SiteSettings) -> str:
    """The site token from its file; ConfigError if the file is missing, empty or readable
    by other users (like ssh with a private key, the agent will not use it then)."""
    f = s.path(s.site.token_file)
    try:
        mode = f.stat().st_mode
        token = f.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"site token file {f} not found") from None
    if mode & 0o077:
        raise ConfigError(f"site token file {f} is readable by other users: "
                          f"chmod 600 {f}")
    if not token:
        raise ConfigError(f"site token file {f} is empty")
    return token


def write_token(path: str | Path, token: str) -> None:
    """Write a token file readable by its owner only (mode 0600, also if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")


DEFAULT_TEMPLATE = """\
# Body of every batch job of this site; the scheduler's directives come before it.
# Add the environment the pilot needs (module load ..., source venv/bin/activate).
# Placeholders: $${job_id} $${site} $${nodes} $${wall_seconds} $${pilot_launch}
set -e
export TIDEWATER_JOB_END=$$(( $$(date +%s) + ${wall_seconds} ))
${pilot_launch}
"""


def init_site(
    directory: str | Path, *, name: str, scheduler: str, controller: str, token: str,
    python: str | None = None, options: dict[str, str] | None = None, ca_file: str = "",
) -> Path:
    """Write a new site directory; refuses to overwrite an existing settings file."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    d = Path(directory).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    f = d / "settings.toml"
    if f.exists():
        raise ConfigError(f"{f} exists already; edit it, or init another directory")
    lines = [
        "# Tidewater site agent settings: `tidewater site start DIR` reads this file.",
        "[site]",
        f"name = {toml_string(name)}",
        f"controller = {toml_string(controller)}",
        'token_file = "token"',
        f"ca_file = {toml_string(ca_file)}   # CA of a wss:// controller; \"\": system trust store",
        f"scheduler = {toml_string(scheduler)}   # slurm | pbs | lsf | cobalt | local",
        'mode = "node"         # node: a pilot per node; head: one pilot launching on every node',
        f"launcher = {toml_string(DEFAULT_LAUNCHER[scheduler])}   "
        "# MPI launcher: mpiexec | cray-mpiexec | mpirun | srun | aprun | jsrun",
        'work_root = "work"    # task work directories',
        f"python = {toml_string(python or sys.executable)}",
        "poll_interval = 10.0  # seconds between looks at the scheduler's queue",
        "cores_per_node = 0    # 0: ask the scheduler, or this machine",
        "gpus_per_node = 0",
        "pilot_idle_timeout = 60.0",
        "",
        "[scheduler]           # options of the scheduler adapter",
        *(f"{toml_key(k)} = {toml_string(v)}" for k, v in (options or {}).items()),
        "",
        "[job]                 # defaults of `tidewater queue submit`",
        'queue = ""',
        'project = ""',
        "wall_time_min = 30",
        "directives = []       # extra lines, e.g. [\"#SBATCH --constraint=cpu\"]",
        "",
        "[limits]              # what batch jobs may ask for (empty/0: no limit of ours)",
        "queues = []",
        "projects = []",
        "max_nodes_per_job = 0",
        "max_wall_time_min = 0",
        "",
        "[autoscale]           # submit batch jobs when tasks wait and no pilot is free",
        "enabled = false",
        "max_queued_jobs = 1",
        "max_total_nodes = 4",
        "min_nodes_per_job = 1",
        "max_nodes_per_job = 1",
        "wall_time_min = 0     # 0: the [job] wall time",
        "",
        "[transfers]           # moving tasks' inputs and outputs (docs/data.md)",
        "max_concurrency = 4   # items at once per remote",
        "retries = 3           # further attempts, with backoff from retry_delay seconds",
        "retry_delay = 1.0",
        "checksum = true       # SHA-256 of everything that lands",
        "file_link = false     # hard-link file:// inputs on the same filesystem",
        'sftp_identity = ""    # private key; "": ~/.ssh keys and the ssh agent',
        'sftp_known_hosts = "" # "": ~/.ssh/known_hosts (host keys are always checked)',
        'globus_endpoint = ""  # this site\'s Globus collection id',
        'globus_work_root = "" # the work root as that collection sees it',
        'globus_token_file = ""',
        "",
        "[relay]               # compute nodes that cannot reach the controller connect to this",
        "                      # agent, which carries their bytes (TLS and tokens stay end to end)",
        'listen = ""           # "": off; e.g. "0.0.0.0:7700"',
        'advertise = ""        # what pilots dial, e.g. "login01:7700" ("": this host\'s name)',
        "max_connections = 256",
        "connect_timeout = 10.0",
        "",
    ]
    f.write_text("\n".join(lines))
    t = d / "job-template.sh"
    if not t.exists():
        t.write_text(DEFAULT_TEMPLATE)
    write_token(d / "token", token)
    load(d)  # what was written must read back
    return d


def pilot_argv(
    s: SiteSettings, *, job_id: int, token_file: str, head: bool, hostname: str = "",
) -> list[str]:
    """The pilot command inside a batch job.

    With the relay on, the pilots connect through it: ``--relay`` is
    :meth:`SiteSettings.relay_address` (``hostname``: the login node's name,
    for a relay listening on every interface; default this host's).
    """
    py = s.site.python or sys.executable
    ca_file = s.ca_file()
    relay = s.relay_address(hostname or socket.gethostname())
    argv = [
        py, "-m", "tidewater", "--url", ",".join(controller_urls(s.site.controller)),
        *(["--ca-file", ca_file] if ca_file else []), "pilot",
        "--site", s.site.name, "--batch-job", str(job_id), "--token-file", token_file,
        "--workdir", str(s.path(s.site.work_root)),
        "--idle-timeout", f"{s.site.pilot_idle_timeout:g}",
        "--prefetch", str(s.site.pilot_prefetch),
        "--heartbeat", f"{s.site.heartbeat_interval:g}",
        "--wall-margin", f"{s.site.wall_time_margin:g}",
        "--drain-timeout", f"{s.site.pilot_drain_timeout:g}",
        "--launcher", s.launcher,
    ]
    if s.site.cores_per_node:
        argv += ["--cores", str(s.site.cores_per_node)]
    if s.site.gpus_per_node:
        argv += ["--gpus", str(s.site.gpus_per_node)]
    if relay:
        argv += ["--relay", relay]
    if head:
        argv.append("--head")
    return argv


def render_body(
    template: str, *, job_id: int, site: str, nodes: int, wall_time_min: int,
    pilot_launch: list[str], minute_seconds: float = 60.0,
) -> str:
    """The batch script's body from the site's template. ConfigError on a bad placeholder."""
    try:
        return string.Template(template).substitute(
            job_id=str(job_id), site=shlex.quote(site), nodes=str(nodes),
            wall_seconds=str(round(wall_time_min * minute_seconds)),
            pilot_launch=shlex.join(pilot_launch),
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"job template: bad placeholder {exc}") from None
