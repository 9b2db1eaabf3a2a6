"""What every scheduler adapter provides, and the one driver that runs it.

An adapter (Slurm, PBS, LSF, Cobalt, local) is pure: it renders a batch
script, builds the argv of ``submit``/``status``/``cancel``, and parses what
those commands print, translating native states into Tidewater's batch-job
states. Only :class:`SchedulerClient` does I/O, through an injected
:class:`CommandRunner`, so the adapters are tested on recorded output and the
driver against fake executables and real Slurm.

Batch-job states (DESIGN.md) are :class:`tidewater.states.JobState`, shared
with the controller and the agent; every adapter's table maps its native
states into them::

    pending_submission -> queued -> running -> finished
           |                 \\-> pending_deletion -> finished
           \\-> submit_failed

A job that ended for any reason (completed, failed, timed out, cancelled) is
``finished``: a TIMEOUT is not a failure of the batch job. Why it ended (the
scheduler's ``TIMEOUT``, an exit code) goes into :attr:`JobStatus.reason`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from tidewater.errors import ConfigError, SchedulerCommandError
from tidewater.states import JOB_FINAL as FINAL_JOB_STATES
from tidewater.states import JOB_STATES, JobState

__all__ = [
    "FINAL_JOB_STATES",
    "JOB_STATES",
    "CommandResult",
    "CommandRunner",
    "JobRequest",
    "JobState",
    "JobStatus",
    "PartitionLimits",
    "Scheduler",
    "SchedulerClient",
    "check_request",
    "directive_value",
    "quote_argv",
    "run_command",
]


@dataclass(frozen=True)
class JobRequest:
    """One batch job to submit, as the agent renders it."""

    job_name: str
    """Unique name (``tw-<site>-<id>``); adoption after an agent restart finds jobs by it."""
    nodes: int
    wall_time_min: int
    workdir: str
    """Directory holding the script; the job's stdout/stderr go here too."""
    script_body: str
    """Environment setup and pilot launch lines, placed after the directives."""
    queue: str = ""
    project: str = ""
    extra_directives: tuple[str, ...] = ()
    """Raw scheduler directive lines from the site settings (``#SBATCH --constraint=gpu``)."""


@dataclass(frozen=True)
class JobStatus:
    """One batch job as the scheduler lists it."""

    scheduler_id: str
    state: JobState
    native_state: str
    name: str = ""
    nodes: int | None = None
    queue: str = ""
    start_time: float | None = None
    end_time: float | None = None
    reason: str = ""
    """The scheduler's why: pending reason, TIMEOUT, exit code text."""


@dataclass(frozen=True)
class PartitionLimits:
    """What one queue/partition accepts (None: no limit known)."""

    name: str
    max_nodes: int | None = None
    max_wall_min: int | None = None
    total_nodes: int | None = None
    cores_per_node: int | None = None
    gpus_per_node: int | None = None
    available: bool = True


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command to completion (cancel-safe: cancelling kills it)."""

    async def __call__(
        self, argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult: ...


class Scheduler:
    """Base of the pure adapters. Subclasses override every method that raises."""

    name: str = ""
    script_shebang: str = "#!/bin/bash"
    directive_prefix: str = "#"

    def directives(self, req: JobRequest) -> list[str]:
        """Scheduler directive lines for ``req`` (without the site's extra lines)."""
        raise NotImplementedError

    def render_script(self, req: JobRequest) -> str:
        """The whole batch script: shebang, directives, the site's body."""
        lines = [self.script_shebang, *self.directives(req), *req.extra_directives, ""]
        lines.append(req.script_body.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def submit_argv(self, script_path: str, req: JobRequest) -> list[str]:
        raise NotImplementedError

    def parse_submit_output(self, stdout: str) -> str:
        """The scheduler id of the job just submitted; SchedulerOutputError if absent."""
        raise NotImplementedError

    def status_argv(self, user: str | None) -> list[str]:
        """List every job of ``user`` (None: the current user), finished ones where the scheduler keeps them."""
        raise NotImplementedError

    def parse_status_output(self, stdout: str) -> list[JobStatus]:
        raise NotImplementedError

    def cancel_argv(self, scheduler_id: str) -> list[str]:
        raise NotImplementedError

    def partitions_argv(self) -> list[str] | None:
        """Command listing queue limits, or None where the adapter cannot ask."""
        return None

    def parse_partitions_output(self, stdout: str) -> list[PartitionLimits]:
        return []

    def node_launch_argv(self, nodes: int) -> list[str]:
        """Prefix that starts one process per node of the allocation (node mode)."""
        raise NotImplementedError


async def run_command(
    argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None
) -> CommandResult:
    """The real :class:`CommandRunner`: runs argv without a shell, never blocking the loop."""
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = await anyio.run_process(list(argv), cwd=cwd, env=full_env, check=False)
    except OSError as exc:
        raise SchedulerCommandError(list(argv), None, "", str(exc), reason="could not start") from exc
    return CommandResult(
        list(argv), proc.returncode,
        proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
    )


@dataclass
class SchedulerClient:
    """Runs an adapter's commands; every failure is a SchedulerCommandError with argv and output."""

    adapter: Scheduler
    runner: CommandRunner = run_command
    timeout: float = 60.0
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    async def _run(self, argv: list[str], cwd: str | None = None) -> CommandResult:
        with anyio.move_on_after(self.timeout) as scope:
            res = await self.runner(argv, cwd=cwd, env=self.env or None)
        if scope.cancelled_caught:
            raise SchedulerCommandError(argv, None, reason=f"timed out after {self.timeout:g} s")
        if res.returncode != 0:
            raise SchedulerCommandError(argv, res.returncode, res.stdout, res.stderr)
        return res

    async def submit(self, req: JobRequest) -> str:
        """Write the script into ``req.workdir`` and submit it; returns the scheduler id."""
        wd = anyio.Path(req.workdir)
        await wd.mkdir(parents=True, exist_ok=True)
        script = wd / "job.sh"
        await script.write_text(self.adapter.render_script(req))
        await script.chmod(0o700)
        argv = self.adapter.submit_argv(str(script), req)
        res = await self._run(argv, cwd=req.workdir)
        return self.adapter.parse_submit_output(res.stdout)

    async def status(self) -> list[JobStatus]:
        res = await self._run(self.adapter.status_argv(self.user))
        return self.adapter.parse_status_output(res.stdout)

    async def cancel(self, scheduler_id: str) -> None:
        await self._run(self.adapter.cancel_argv(scheduler_id))

    async def partitions(self) -> list[PartitionLimits]:
        argv = self.adapter.partitions_argv()
        if argv is None:
            return []
        res = await self._run(argv)
        return self.adapter.parse_partitions_output(res.stdout)


def quote_argv(argv: Sequence[str]) -> str:
    """One shell-safe line for a batch script."""
    return shlex.join(argv)


def check_request(req: JobRequest) -> None:
    """ConfigError if ``req`` asks for something no scheduler can run (no nodes, no time)."""
    if req.nodes < 1:
        raise ConfigError(f"batch job {req.job_name!r} asks for {req.nodes} nodes; it needs at least 1")
    if req.wall_time_min < 1:
        raise ConfigError(
            f"batch job {req.job_name!r} asks for {req.wall_time_min} minutes of wall time;"
            " it needs at least 1"
        )


def directive_value(what: str, value: str, *, quote: bool = False) -> str:
    """``value`` made safe for one scheduler directive line.

    A newline or other control character would end the directive and let the
    rest be read as script or as another directive, so it is refused. Values
    with spaces or shell-special characters are put in double quotes where the
    scheduler's directive parser understands them (``quote=True``: Slurm,
    LSF) and refused where it does not (PBS, Cobalt).

    Raises ConfigError naming ``what`` and the value, saying what to change.
    """
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{what} {value!r} cannot go into a batch directive: it is empty or holds a"
            " control character (newline, tab); change the setting"
        )
    if _PLAIN.fullmatch(value):
        return value
    if quote and not any(c in value for c in '"\\$`'):
        return f'"{value}"'
    raise ConfigError(
        f"{what} {value!r} cannot go into a batch directive of this scheduler: it holds"
        " spaces or characters the scheduler does not accept; use letters, digits and . _ - / : + @ %"
    )


_PLAIN = re.compile(r"[\w@%+=:,./-]+")
