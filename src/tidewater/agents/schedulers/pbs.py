"""PBS Pro: ``#PBS`` scripts, ``qsub``/``qstat -f -F json``/``qdel`` argv and parsers.

Pure. Recorded samples of each command's output live in
``tests/unit/data/schedulers/``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from tidewater.agents.schedulers.base import (
    JobRequest,
    JobState,
    JobStatus,
    Scheduler,
    check_request,
    directive_value,
)
from tidewater.errors import SchedulerOutputError

# PBS Pro job_state letters. Held, waiting (for a start time) and suspended
# jobs do no work yet, so they count as queued; E (exiting) still holds nodes.
PBS_STATES: dict[str, JobState] = {
    "Q": JobState.QUEUED,    # queued
    "H": JobState.QUEUED,    # held
    "W": JobState.QUEUED,    # waiting for its execution time
    "T": JobState.QUEUED,    # being moved to a new location
    "S": JobState.QUEUED,    # suspended
    "U": JobState.QUEUED,    # suspended: workstation busy
    "R": JobState.RUNNING,   # running
    "E": JobState.RUNNING,   # exiting after having run
    "B": JobState.RUNNING,   # array job: at least one subjob started
    "F": JobState.FINISHED,  # finished (history, with qstat -x)
    "X": JobState.FINISHED,  # subjob finished
    "M": JobState.FINISHED,  # moved to another server: gone from ours
}

# PBS Pro's negative Exit_status values (JOB_EXEC_* in the server's job.h):
# the job did not end by itself.
PBS_EXEC_CODES: dict[int, str] = {
    -1: "NODE_FAIL (exit -1: job exec failed before files, no retry)",
    -2: "NODE_FAIL (exit -2: job exec failed after files, no retry)",
    -3: "NODE_FAIL (exit -3: job exec failed, will retry)",
    -4: "NODE_FAIL (exit -4: job aborted on MoM initialization)",
    -10: "FAILED (exit -10: invalid uid/gid for job)",
    -11: "FAILED (exit -11: job was rerun)",
    -14: "NODE_FAIL (exit -14: a sister MoM failed)",
    -20: "NODE_FAIL (exit -20: lost contact with the mother superior)",
    -26: "OUT_OF_MEMORY (exit -26: vmem limit exceeded)",
    -27: "OUT_OF_MEMORY (exit -27: mem limit exceeded)",
    -28: "FAILED (exit -28: cput limit exceeded)",
    -29: "TIMEOUT",
}

_CTIME_FORMAT = "%a %b %d %H:%M:%S %Y"
_WALLTIME_RE = re.compile(r"(\d+):(\d\d):(\d\d)")


def pbs_state(letter: str) -> JobState:
    """Our state for a PBS job_state letter; SchedulerOutputError if unknown."""
    try:
        return PBS_STATES[letter]
    except KeyError:
        raise SchedulerOutputError("a PBS job_state", letter) from None


def exit_reason(exit_status: int | None) -> str:
    """Why a finished PBS job ended, in the words Slurm uses (COMPLETED, TIMEOUT, ...).

    None (a job deleted before it ran has no Exit_status) reads as CANCELLED;
    256 + N is a job killed by signal N (qdel sends SIGTERM: 271).
    """
    if exit_status is None:
        return "CANCELLED"
    if exit_status == 0:
        return "COMPLETED"
    if exit_status < 0:
        return PBS_EXEC_CODES.get(exit_status, f"FAILED (exit {exit_status}: PBS could not run the job)")
    if exit_status > 256:
        return f"CANCELLED (killed by signal {exit_status - 256})"
    return f"FAILED (exit {exit_status})"


def parse_pbs_time(text: object) -> float | None:
    """A qstat time (ctime style, ``Wed Nov 25 15:56:17 2026``, local time) as epoch seconds.

    Raises SchedulerOutputError for text in another form.
    """
    if text is None or text == "":
        return None
    if isinstance(text, int | float):  # some versions print epoch seconds
        return float(text)
    try:
        return datetime.strptime(" ".join(str(text).split()), _CTIME_FORMAT).timestamp()
    except ValueError:
        raise SchedulerOutputError("a PBS time", str(text)) from None


def format_walltime(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def parse_walltime_min(text: str) -> int:
    """``HH:MM:SS`` as whole minutes, rounded up; SchedulerOutputError otherwise."""
    m = _WALLTIME_RE.fullmatch(text.strip())
    if m is None:
        raise SchedulerOutputError("a PBS walltime", text)
    h, mi, s = (int(x) for x in m.groups())
    return h * 60 + mi + (1 if s else 0)


def _load_json(stdout: str) -> Any:
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pass
    # PBS Pro before 2021 did not escape values in Variable_List (a backslash
    # or quote in the user's environment makes the whole document invalid);
    # nothing we read is in there, so drop it and try again.
    cleaned = re.sub(r'"Variable_List"\s*:\s*\{.*?\}\s*,?', "", stdout, flags=re.S)
    try:
        return json.loads(cleaned)
    except json.JSONDecodeError:
        raise SchedulerOutputError("the JSON of qstat -f -F json", stdout) from None


class PbsScheduler(Scheduler):
    """PBS Pro adapter.

    ``place`` is the chunk placement (``scatter:excl``: one chunk per host,
    hosts not shared, so ``select=N`` means N whole nodes).
    """

    name = "pbs"
    directive_prefix = "#PBS"

    def __init__(self, *, place: str = "scatter:excl") -> None:
        self.place = place

    def directives(self, req: JobRequest) -> list[str]:
        """``#PBS`` lines; ConfigError for values PBS cannot take in a directive."""
        check_request(req)
        p = self.directive_prefix
        lines = [
            f"{p} -N {directive_value('job name', req.job_name)}",
            f"{p} -l select={req.nodes}",
            f"{p} -l walltime={format_walltime(req.wall_time_min)}",
        ]
        if self.place:
            lines.append(f"{p} -l place={directive_value('placement', self.place)}")
        if req.queue:
            lines.append(f"{p} -q {directive_value('queue', req.queue)}")
        if req.project:
            lines.append(f"{p} -A {directive_value('project', req.project)}")
        # PBS does not put the job id in -o paths; the work directory is the job's own.
        out = directive_value("work directory", req.workdir.rstrip("/") + "/job.out")
        lines += [f"{p} -j oe", f"{p} -o {out}"]
        return lines

    def submit_argv(self, script_path: str, req: JobRequest) -> list[str]:
        return ["qsub", script_path]

    def parse_submit_output(self, stdout: str) -> str:
        """The ``1234.server`` id qsub printed; SchedulerOutputError if none."""
        for line in reversed(stdout.splitlines()):
            word = line.strip()
            if re.fullmatch(r"\d+(\[\d*\])?(\.[\w.-]+)?", word):
                return word
        raise SchedulerOutputError("a job id from qsub", stdout)

    def status_argv(self, user: str | None) -> list[str]:
        # qstat -f cannot filter by user (-u belongs to the short format), so
        # every visible job is listed; the caller finds its own by name.
        # -x adds finished jobs for the server's job_history_duration.
        return ["qstat", "-f", "-F", "json", "-x"]

    def parse_status_output(self, stdout: str) -> list[JobStatus]:
        """PBS Pro's ``qstat -f -F json``; SchedulerOutputError for JSON or fields we cannot read."""
        if not stdout.strip():
            return []
        doc = _load_json(stdout)
        if not isinstance(doc, dict):
            raise SchedulerOutputError("the JSON of qstat -f -F json", stdout)
        jobs = doc.get("Jobs", {})
        if not isinstance(jobs, dict):
            raise SchedulerOutputError("the Jobs object of qstat -f -F json", stdout)
        return [self._job(job_id, rec) for job_id, rec in jobs.items()]

    def _job(self, job_id: str, rec: Any) -> JobStatus:
        if not isinstance(rec, dict) or not isinstance(rec.get("job_state"), str):
            raise SchedulerOutputError(f"job_state of job {job_id}", json.dumps(rec))
        native = rec["job_state"]
        state = pbs_state(native)
        res = rec.get("Resource_List") or {}
        nodes = res.get("nodect") if isinstance(res, dict) else None
        code = rec.get("Exit_status")
        if state == "finished":
            reason = "MOVED" if native == "M" else exit_reason(code if isinstance(code, int) else None)
        else:
            reason = str(rec.get("comment", ""))
        start = parse_pbs_time(rec.get("stime")) if state != "queued" else None
        end = None
        if state == "finished":
            end = parse_pbs_time(rec.get("obittime") or rec.get("mtime"))
        return JobStatus(
            scheduler_id=job_id, state=state, native_state=native,
            name=str(rec.get("Job_Name", "")), nodes=nodes if isinstance(nodes, int) else None,
            queue=str(rec.get("queue", "")), start_time=start, end_time=end, reason=reason,
        )

    def cancel_argv(self, scheduler_id: str) -> list[str]:
        return ["qdel", scheduler_id]

    def node_launch_argv(self, nodes: int) -> list[str]:
        """``mpiexec -n N -ppn 1``: one pilot per host of PBS_NODEFILE.

        The MPI launchers found with PBS (MPICH/Hydra, Intel MPI, Cray PALS)
        read PBS_NODEFILE themselves and start through PBS's TM interface, so
        the pilots are accounted to the job and killed with it. ``-ppn 1``
        caps it at one per host even where PBS_NODEFILE repeats a host (one
        line per MPI rank when a chunk asks ``mpiprocs>1``). pbsdsh was the
        other choice: it starts one copy per vnode entry, which on hosts split
        into several vnodes is more than one per node.
        """
        return ["mpiexec", "-n", str(nodes), "-ppn", "1"]
