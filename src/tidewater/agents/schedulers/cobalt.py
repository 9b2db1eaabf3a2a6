"""Cobalt (ALCF Theta-era): ``#COBALT`` scripts, ``qsub``/``qstat``/``qdel`` argv and parsers.

Pure. Cobalt's qstat prints a fixed-column table whose columns are chosen
with ``--header``; finished jobs leave the table at once, so the caller
counts a job that vanished as finished.
"""

from __future__ import annotations

import re
from datetime import datetime

from tidewater.agents.schedulers.base import (
    JobRequest,
    JobState,
    JobStatus,
    Scheduler,
    check_request,
    directive_value,
)
from tidewater.errors import SchedulerOutputError

COBALT_STATES: dict[str, JobState] = {
    "queued": JobState.QUEUED,
    "hold": JobState.QUEUED,
    "user_hold": JobState.QUEUED,
    "admin_hold": JobState.QUEUED,
    "dep_hold": JobState.QUEUED,
    "maxrun_hold": JobState.QUEUED,
    "starting": JobState.RUNNING,
    "running": JobState.RUNNING,
    "exiting": JobState.RUNNING,
    "killing": JobState.RUNNING,
    "dep_fail": JobState.FINISHED,
    "finished": JobState.FINISHED,
    "failed": JobState.FINISHED,
    "done": JobState.FINISHED,
}

# StartTime last: it is the one column whose values hold spaces.
QSTAT_HEADER = ("JobID", "JobName", "User", "Nodes", "State", "Queue", "WallTime", "StartTime")
_TIME_FORMATS = ("%m/%d/%y %H:%M:%S", "%a %b %d %H:%M:%S %Y", "%Y-%m-%d %H:%M:%S")


def cobalt_state(state: str) -> JobState:
    """Our state for a Cobalt job state; SchedulerOutputError if unknown."""
    try:
        return COBALT_STATES[state]
    except KeyError:
        raise SchedulerOutputError("a Cobalt job state", state) from None


def parse_cobalt_time(text: str) -> float | None:
    """A qstat StartTime as epoch seconds; ``N/A`` gives None.

    Reads ``11/25/26 15:56:17`` (local time) and the long form
    ``Wed Nov 25 15:56:17 2026 +0000 (UTC)``; anything else raises
    SchedulerOutputError.
    """
    text = " ".join(text.split())
    if text in ("", "N/A", "-", "None"):
        return None
    m = re.fullmatch(r"(.*) ([+-]\d{4})(?: \(\w+\))?", text)
    if m is not None:
        try:
            return datetime.strptime(f"{m.group(1)} {m.group(2)}", "%a %b %d %H:%M:%S %Y %z").timestamp()
        except ValueError:
            raise SchedulerOutputError("a Cobalt time", text) from None
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    raise SchedulerOutputError("a Cobalt time", text)


def split_table(stdout: str) -> list[dict[str, str]]:
    """Rows of a Cobalt fixed-column table as {header: value}.

    Column boundaries come from where each header word starts (Cobalt
    left-aligns values under their header); the last column runs to the end
    of the line. Raises SchedulerOutputError if the header or its ``===``
    rule is missing.
    """
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0]
    if len(lines) < 2 or set(lines[1].strip()) != {"="}:
        raise SchedulerOutputError("a Cobalt qstat table (header, then a === rule)", stdout)
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[2:]:
        if any(0 < s <= len(line) and not line[s - 1].isspace() for s in starts):
            raise SchedulerOutputError("a Cobalt qstat row aligned under its header", line)
        cells = [
            line[s:(starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, s in enumerate(starts)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def format_table(header: tuple[str, ...] | list[str], rows: list[dict[str, str]]) -> str:
    """A table the way Cobalt's qstat prints it (what :func:`split_table` reads)."""
    widths = [max([len(h), *(len(r.get(h, "")) for r in rows)]) for h in header]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("=" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        out.append("  ".join(r.get(h, "").ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"


class CobaltScheduler(Scheduler):
    """Cobalt adapter (Theta-style Cray XC: ``aprun`` launches on compute nodes)."""

    name = "cobalt"
    directive_prefix = "#COBALT"

    def directives(self, req: JobRequest) -> list[str]:
        """``#COBALT`` lines; ConfigError for values a directive cannot hold."""
        check_request(req)
        p = self.directive_prefix
        lines = [
            f"{p} -n {req.nodes}",
            f"{p} -t {req.wall_time_min}",
            f"{p} --jobname {directive_value('job name', req.job_name)}",
        ]
        if req.queue:
            lines.append(f"{p} -q {directive_value('queue', req.queue)}")
        if req.project:
            lines.append(f"{p} -A {directive_value('project', req.project)}")
        # -O is a prefix: Cobalt writes <prefix>.output, .error and .cobaltlog.
        prefix = directive_value("work directory", req.workdir.rstrip("/") + "/job")
        lines.append(f"{p} -O {prefix}")
        return lines

    def submit_argv(self, script_path: str, req: JobRequest) -> list[str]:
        return ["qsub", script_path]

    def parse_submit_output(self, stdout: str) -> str:
        """The numeric id qsub prints last (after any routing notes); SchedulerOutputError if none."""
        for line in reversed(stdout.splitlines()):
            if line.strip().isdigit():
                return line.strip()
        raise SchedulerOutputError("a job id from qsub", stdout)

    def status_argv(self, user: str | None) -> list[str]:
        argv = ["qstat"]
        if user:
            argv += ["-u", user]
        return [*argv, "--header", ":".join(QSTAT_HEADER)]

    def parse_status_output(self, stdout: str) -> list[JobStatus]:
        """The qstat table of :data:`QSTAT_HEADER`; SchedulerOutputError for one we cannot read."""
        jobs = []
        for row in split_table(stdout):
            try:
                job_id, state_word = row["JobID"], row["State"]
            except KeyError:
                raise SchedulerOutputError(
                    f"a qstat table with columns {':'.join(QSTAT_HEADER)}", stdout
                ) from None
            if not job_id.isdigit():
                raise SchedulerOutputError("a Cobalt job id", job_id)
            state = cobalt_state(state_word)
            nodes = row.get("Nodes", "")
            start = parse_cobalt_time(row.get("StartTime", "")) if state != "queued" else None
            jobs.append(JobStatus(
                scheduler_id=job_id, state=state, native_state=state_word,
                name=row.get("JobName", ""), nodes=int(nodes) if nodes.isdigit() else None,
                queue=row.get("Queue", ""), start_time=start,
                reason=state_word.upper() if state == "finished" else
                ("" if state_word in ("queued", "running") else state_word),
            ))
        return jobs

    def cancel_argv(self, scheduler_id: str) -> list[str]:
        return ["qdel", scheduler_id]

    def node_launch_argv(self, nodes: int) -> list[str]:
        """``aprun -n N -N 1 -cc none``: one pilot per compute node, not pinned to a core.

        Cobalt scripts run on a MOM node; only aprun reaches the compute
        nodes. ``-cc none`` leaves the pilot and the tasks it forks free to
        use every core of their node.
        """
        return ["aprun", "-n", str(nodes), "-N", "1", "-cc", "none"]
