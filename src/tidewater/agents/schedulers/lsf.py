"""IBM Spectrum LSF: ``#BSUB`` scripts, ``bsub``/``bjobs -json``/``bkill`` argv and parsers.

Pure. Recorded samples of each command's output live in
``tests/unit/data/schedulers/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from tidewater.agents.schedulers.base import (
    JobRequest,
    JobState,
    JobStatus,
    Scheduler,
    check_request,
    directive_value,
)
from tidewater.errors import SchedulerOutputError

# bjobs STAT values. Suspended jobs (PSUSP held while pending, USUSP/SSUSP
# stopped while running) do no work, so they count as queued. UNKWN means
# mbatchd lost the execution host: the job may well still run.
LSF_STATES: dict[str, JobState] = {
    "PEND": JobState.QUEUED,
    "PSUSP": JobState.QUEUED,
    "USUSP": JobState.QUEUED,
    "SSUSP": JobState.QUEUED,
    "WAIT": JobState.QUEUED,
    "PROV": JobState.QUEUED,
    "RUN": JobState.RUNNING,
    "UNKWN": JobState.RUNNING,
    "DONE": JobState.FINISHED,
    "EXIT": JobState.FINISHED,
    "ZOMBI": JobState.FINISHED,
}

BJOBS_FIELDS = (
    "jobid job_name stat queue nexec_host start_time finish_time exit_code exit_reason pend_reason"
)

# EXIT_REASON prefixes (bjobs -l "TERM_*" codes) in the words Slurm uses.
_TERM_REASONS = {
    "TERM_RUNLIMIT": "TIMEOUT",
    "TERM_DEADLINE": "TIMEOUT",
    "TERM_OWNER": "CANCELLED",
    "TERM_ADMIN": "CANCELLED",
    "TERM_FORCE_OWNER": "CANCELLED",
    "TERM_FORCE_ADMIN": "CANCELLED",
    "TERM_REQUEUE_OWNER": "CANCELLED",
    "TERM_PREEMPT": "PREEMPTED",
    "TERM_MEMLIMIT": "OUT_OF_MEMORY",
    "TERM_SWAP": "OUT_OF_MEMORY",
    "TERM_HOST": "NODE_FAIL",
    "TERM_LOAD": "NODE_FAIL",
}
_SUBMIT_RE = re.compile(r"Job <(\d+)> is submitted")
_TIME_FORMATS = ("%b %d %H:%M:%S %Y", "%b %d %H:%M %Y", "%b %d %H:%M:%S", "%b %d %H:%M")


def lsf_state(stat: str) -> JobState:
    """Our state for a bjobs STAT; SchedulerOutputError if unknown."""
    try:
        return LSF_STATES[stat]
    except KeyError:
        raise SchedulerOutputError("an LSF job STAT", stat) from None


def parse_lsf_time(text: str, now: float) -> float | None:
    """A bjobs time as epoch seconds; ``now`` supplies the year LSF leaves out.

    bjobs prints ``Nov 25 15:56`` (local time), with seconds and year when
    LSB_DISPLAY_YEAR is set, and a trailing ``E`` (estimated) or ``L``
    flag. A year-less time is placed in the latest year not after ``now``.
    Empty or ``-`` gives None; other text raises SchedulerOutputError.
    """
    text = " ".join(text.split())
    if text in ("", "-"):
        return None
    text = re.sub(r" [A-Z]$", "", text)
    for fmt in _TIME_FORMATS:
        try:
            dt = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if "%Y" in fmt:
            return dt.timestamp()
        year = datetime.fromtimestamp(now).year
        # Feb 29 only parses with a leap year, so parse with the year attached.
        for y in (year, year - 1):
            try:
                t = datetime.strptime(f"{text} {y}", f"{fmt} %Y").timestamp()
            except ValueError:
                continue
            if t <= now + 86400:  # a day of slack for clock skew between hosts
                return t
        return None
    raise SchedulerOutputError("an LSF time", text)


def term_reason(stat: str, exit_code: str, exit_reason: str) -> str:
    """Why a finished LSF job ended (COMPLETED, TIMEOUT, CANCELLED, FAILED (exit N), ...)."""
    if stat == "DONE":
        return "COMPLETED"
    if stat == "ZOMBI":
        return "NODE_FAIL"
    term = exit_reason.split(":", 1)[0].strip()
    if term in _TERM_REASONS:
        return _TERM_REASONS[term]
    # Without EXIT_REASON: 140 = 128 + SIGUSR2, which LSF sends at the run limit.
    if exit_code == "140":
        return "TIMEOUT"
    return f"FAILED (exit {exit_code})" if exit_code else "FAILED"


class LsfScheduler(Scheduler):
    """LSF adapter.

    ``nodes_style="nnodes"`` asks whole nodes with ``-nnodes`` (LSF with CSM,
    Summit-like, launching with ``jsrun``); ``"slots"`` asks ``-n N`` slots,
    one per exclusive host (plain LSF, launching with ``mpirun``). ``clock``
    gives the year bjobs leaves out of its times (tests fix it).
    """

    name = "lsf"
    directive_prefix = "#BSUB"

    def __init__(
        self, *, nodes_style: Literal["nnodes", "slots"] = "nnodes",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nodes_style = nodes_style
        self.clock = clock

    def directives(self, req: JobRequest) -> list[str]:
        """``#BSUB`` lines; ConfigError for values a directive cannot hold."""
        check_request(req)
        p = self.directive_prefix
        lines = [f"{p} -J {directive_value('job name', req.job_name, quote=True)}"]
        if self.nodes_style == "nnodes":
            lines.append(f"{p} -nnodes {req.nodes}")
        else:
            lines += [f"{p} -n {req.nodes}", f'{p} -R "span[ptile=1]"', f"{p} -x"]
        lines.append(f"{p} -W {req.wall_time_min}")
        if req.queue:
            lines.append(f"{p} -q {directive_value('queue', req.queue)}")
        if req.project:
            lines.append(f"{p} -P {directive_value('project', req.project)}")
        wd = req.workdir.rstrip("/")
        lines += [
            f"{p} -cwd {directive_value('work directory', wd, quote=True)}",
            f"{p} -o {directive_value('work directory', wd + '/%J.out', quote=True)}",
            f"{p} -e {directive_value('work directory', wd + '/%J.err', quote=True)}",
        ]
        return lines

    def submit_argv(self, script_path: str, req: JobRequest) -> list[str]:
        # bsub reads #BSUB lines only from a script on its standard input
        # (``bsub < job.sh``) unless the site sets LSB_BSUB_PARSE_SCRIPT=Y;
        # the runner has no stdin, so a shell does the redirection.
        return ["/bin/sh", "-c", 'exec bsub < "$1"', "bsub", script_path]

    def parse_submit_output(self, stdout: str) -> str:
        """The id from ``Job <1234> is submitted to queue <batch>.``; SchedulerOutputError if none."""
        m = _SUBMIT_RE.search(stdout)
        if m is None:
            raise SchedulerOutputError("a job id from bsub", stdout)
        return m.group(1)

    def status_argv(self, user: str | None) -> list[str]:
        # -a adds jobs finished within CLEAN_PERIOD (an hour by default).
        argv = ["bjobs", "-a", "-json", "-o", BJOBS_FIELDS]
        if user:
            argv += ["-u", user]
        return argv

    def parse_status_output(self, stdout: str) -> list[JobStatus]:
        """bjobs ``-json`` output; SchedulerOutputError for a document we cannot read."""
        text = stdout.strip()
        if not text or text.startswith("No ") and text.endswith("found"):
            return []  # "No job found", "No unfinished job found"
        try:
            doc = json.loads(text)
            records = doc["RECORDS"]
        except (ValueError, KeyError, TypeError):
            raise SchedulerOutputError("the JSON of bjobs -json", stdout) from None
        if not isinstance(records, list):
            raise SchedulerOutputError("the RECORDS of bjobs -json", stdout)
        now = self.clock()
        return [j for rec in records if (j := self._job(rec, now)) is not None]

    def _job(self, rec: Any, now: float) -> JobStatus | None:
        if not isinstance(rec, dict):
            raise SchedulerOutputError("a bjobs record", json.dumps(rec))
        if "ERROR" in rec:  # {"JOBID": "1", "ERROR": "Job <1> is not found"}
            return None
        try:
            job_id, stat = str(rec["JOBID"]), str(rec["STAT"])
        except KeyError:
            raise SchedulerOutputError("JOBID and STAT of a bjobs record", json.dumps(rec)) from None
        state = lsf_state(stat)
        nexec = str(rec.get("NEXEC_HOST", "")).strip()
        if state == "finished":
            reason = term_reason(stat, str(rec.get("EXIT_CODE", "")).strip(),
                                 str(rec.get("EXIT_REASON", "")))
        else:
            reason = str(rec.get("PEND_REASON", "")).strip().rstrip(";")
        start = parse_lsf_time(str(rec.get("START_TIME", "")), now) if state != "queued" else None
        end = parse_lsf_time(str(rec.get("FINISH_TIME", "")), now) if state == "finished" else None
        return JobStatus(
            scheduler_id=job_id, state=state, native_state=stat,
            name=str(rec.get("JOB_NAME", "")), nodes=int(nexec) if nexec.isdigit() else None,
            queue=str(rec.get("QUEUE", "")), start_time=start, end_time=end, reason=reason,
        )

    def cancel_argv(self, scheduler_id: str) -> list[str]:
        return ["bkill", scheduler_id]

    def node_launch_argv(self, nodes: int) -> list[str]:
        """One pilot per node: ``jsrun`` (nnodes style) or ``mpirun`` (slots style).

        jsrun makes ``nodes`` resource sets, one per host, each holding every
        CPU and GPU of its host (``ALL_CPUS``/``ALL_GPUS``) unbound, so the
        pilot's forked tasks can use the whole node. Note that jsrun cannot
        be called again from inside a jsrun-started process: MPI tasks must
        be launched from the batch node. For plain LSF, Spectrum MPI /
        Open MPI ``mpirun`` reads the LSF allocation; ``ppr:1:node`` places
        one copy per host.
        """
        if self.nodes_style == "nnodes":
            return [
                "jsrun", "--nrs", str(nodes), "--rs_per_host", "1", "--tasks_per_rs", "1",
                "--cpu_per_rs", "ALL_CPUS", "--gpu_per_rs", "ALL_GPUS", "--bind", "none",
            ]
        return ["mpirun", "-np", str(nodes), "--map-by", "ppr:1:node", "--bind-to", "none"]
