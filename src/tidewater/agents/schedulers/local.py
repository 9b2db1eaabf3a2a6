"""The local fork scheduler: batch jobs as detached processes on this machine.

Same render/argv/parse split as the cluster adapters; the commands are
subcommands of :mod:`tidewater.agents.schedulers.localexec`, whose state
directory outlives the agent, so a restarted agent finds its jobs again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tidewater.agents.schedulers.base import (
    JobRequest,
    JobState,
    JobStatus,
    Scheduler,
    check_request,
    directive_value,
)
from tidewater.config import Timeouts, home
from tidewater.errors import ConfigError, SchedulerOutputError

DIRECTIVE = "#TWLOCAL"
_T = Timeouts()
DEFAULT_KILL_GRACE = _T.drain + _T.kill_grace + _T.close
"""SIGTERM -> SIGKILL on cancel (30 s, Slurm's default KillWait): room for a pilot to let
its tasks finish for its default drain timeout and hand back the rest before it is killed."""

LOCAL_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETED": JobState.FINISHED,
    "FAILED": JobState.FINISHED,
    "TIMEOUT": JobState.FINISHED,
    "CANCELLED": JobState.FINISHED,
    "NODE_FAIL": JobState.FINISHED,
}

MODULE = "tidewater.agents.schedulers.localexec"
# localexec is only ever run (python -m), never imported here: importing it
# from the package would make runpy warn each time it starts.


def default_state_dir() -> Path:
    """``$TIDEWATER_HOME/local-jobs``."""
    return home() / "local-jobs"


class LocalScheduler(Scheduler):
    """Jobs forked on this machine (laptops, tests).

    ``state_dir`` holds the job records (default ``$TIDEWATER_HOME/local-jobs``).
    ``minute_seconds`` is how long one minute of wall time lasts: 60 for real
    use, less in tests that need a wall-time kill. ``kill_grace`` is the
    SIGTERM -> SIGKILL delay on cancel and timeout. ``start_delay`` is how many
    seconds each job waits PENDING before it starts, as behind a batch queue (0:
    at once); a site's ``[scheduler] start_delay = 30`` models a busy queue.
    """

    name = "local"
    directive_prefix = DIRECTIVE

    def __init__(
        self, *, state_dir: str | Path | None = None, python: str = sys.executable,
        minute_seconds: float = 60.0, kill_grace: float = DEFAULT_KILL_GRACE,
        start_delay: float = 0.0,
    ) -> None:
        if start_delay < 0:
            raise ConfigError(f"the local scheduler's start_delay is {start_delay:g} s; "
                              "it must be 0 or more seconds")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.python = python
        self.minute_seconds = minute_seconds
        self.kill_grace = kill_grace
        self.start_delay = float(start_delay)

    def _cmd(self, sub: str) -> list[str]:
        return [self.python, "-m", MODULE, sub]

    def directives(self, req: JobRequest) -> list[str]:
        """``#TWLOCAL`` lines localexec reads back; ConfigError for values a directive cannot hold."""
        check_request(req)
        p = self.directive_prefix
        lines = [
            f"{p} --job-name={directive_value('job name', req.job_name, quote=True)}",
            f"{p} --nodes={req.nodes}",
            f"{p} --time={req.wall_time_min}",
        ]
        if req.queue:
            lines.append(f"{p} --queue={directive_value('queue', req.queue, quote=True)}")
        return lines

    def submit_argv(self, script_path: str, req: JobRequest) -> list[str]:
        return [
            *self._cmd("submit"), "--state-dir", str(self.state_dir),
            "--minute-seconds", f"{self.minute_seconds:g}", "--kill-grace", f"{self.kill_grace:g}",
            *(["--start-delay", f"{self.start_delay:g}"] if self.start_delay else []),
            script_path,
        ]

    def parse_submit_output(self, stdout: str) -> str:
        """The job id localexec printed; SchedulerOutputError if there is none."""
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        if not lines or not lines[-1].isdigit():
            raise SchedulerOutputError("a job id from localexec submit", stdout)
        return lines[-1]

    def status_argv(self, user: str | None) -> list[str]:
        # Local jobs are this user's by construction: ``user`` is ignored.
        return [*self._cmd("status"), "--state-dir", str(self.state_dir)]

    def parse_status_output(self, stdout: str) -> list[JobStatus]:
        """localexec's JSON lines; SchedulerOutputError for a line that is not one."""
        jobs = []
        for line in stdout.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                native = str(rec["state"])
                jobs.append(JobStatus(
                    scheduler_id=str(rec["id"]), state=LOCAL_STATES[native], native_state=native,
                    name=str(rec.get("name", "")), nodes=rec.get("nodes"),
                    queue=str(rec.get("queue", "")), start_time=rec.get("start_time"),
                    end_time=rec.get("end_time"), reason=str(rec.get("reason", "")),
                ))
            except (ValueError, KeyError, TypeError):
                raise SchedulerOutputError("a localexec status line", line) from None
        return jobs

    def cancel_argv(self, scheduler_id: str) -> list[str]:
        return [*self._cmd("cancel"), "--state-dir", str(self.state_dir), scheduler_id]

    def node_launch_argv(self, nodes: int) -> list[str]:
        """``localexec fanout``: ``nodes`` copies here, each with TIDEWATER_NODE_INDEX."""
        return [*self._cmd("fanout"), "-n", str(nodes), "--"]
