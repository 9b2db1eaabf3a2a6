"""Slurm: ``#SBATCH`` scripts, ``sbatch``/``squeue``/``scancel``/``sinfo`` argv and parsers.

Pure: nothing here runs a command. The formats parsed are the ones Slurm
prints for the explicit ``--format`` strings below (checked against Slurm
22.05; recorded samples live in ``tests/unit/data/schedulers/``).
"""

from __future__ import annotations

import re
from datetime import datetime

from tidewater.agents.schedulers.base import (
    JobRequest,
    JobState,
    JobStatus,
    PartitionLimits,
    Scheduler,
    check_request,
    directive_value,
)
from tidewater.errors import SchedulerOutputError

# Every job state squeue prints (long form, ``%T``), mapped into ours.
# Compact codes (``%t``) map through COMPACT_STATES. A held or suspended job
# still waits for its nodes to do work, so it counts as queued; COMPLETING and
# STAGE_OUT still hold the allocation, so they count as running.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "CONFIGURING": JobState.QUEUED,
    "REQUEUED": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED,
    "SPECIAL_EXIT": JobState.QUEUED,
    "SUSPENDED": JobState.QUEUED,
    "STOPPED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.FINISHED,
    "FAILED": JobState.FINISHED,
    "TIMEOUT": JobState.FINISHED,
    "CANCELLED": JobState.FINISHED,
    "NODE_FAIL": JobState.FINISHED,
    "PREEMPTED": JobState.FINISHED,
    "OUT_OF_MEMORY": JobState.FINISHED,
    "BOOT_FAIL": JobState.FINISHED,
    "DEADLINE": JobState.FINISHED,
    "REVOKED": JobState.FINISHED,
}

COMPACT_STATES: dict[str, str] = {
    "PD": "PENDING", "CF": "CONFIGURING", "RQ": "REQUEUED", "RH": "REQUEUE_HOLD",
    "RF": "REQUEUE_FED", "RD": "RESV_DEL_HOLD", "SE": "SPECIAL_EXIT", "S": "SUSPENDED",
    "ST": "STOPPED", "R": "RUNNING", "CG": "COMPLETING", "RS": "RESIZING", "SI": "SIGNALING",
    "SO": "STAGE_OUT", "CD": "COMPLETED", "F": "FAILED", "TO": "TIMEOUT", "CA": "CANCELLED",
    "NF": "NODE_FAIL", "PR": "PREEMPTED", "OOM": "OUT_OF_MEMORY", "BF": "BOOT_FAIL",
    "DL": "DEADLINE", "RV": "REVOKED",
}

# squeue fields, '|'-separated, the job name last so a '|' inside it survives.
SQUEUE_FORMAT = "%i|%T|%D|%P|%S|%e|%r|%j"
SQUEUE_FIELDS = 8
# sinfo fields: partition (default marked '*'), avail, max time, job size range
# in nodes, node count, CPUs per node, GRES.
SINFO_FORMAT = "%P|%a|%l|%s|%D|%c|%G"
SINFO_FIELDS = 7

_NO_TIME = frozenset({"", "N/A", "Unknown", "None", "(null)"})
_UNLIMITED = frozenset({"infinite", "unlimited", "UNLIMITED", "INFINITE"})
_TIME_RE = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_GPU_RE = re.compile(r"gpu(?::[^:(,]+)?:(\d+)")


def slurm_state(native: str) -> JobState:
    """Our state for a squeue state (long or compact); SchedulerOutputError if unknown.

    ``CANCELLED by 1234`` (as sacct prints it) reads as CANCELLED.
    """
    word = native.split(" ", 1)[0].rstrip("+").upper()
    word = COMPACT_STATES.get(word, word)
    try:
        return SLURM_STATES[word]
    except KeyError:
        raise SchedulerOutputError("a Slurm job state", native) from None


def parse_slurm_time(text: str) -> float | None:
    """A squeue/sacct timestamp (``2026-11-25T15:56:17``, local time) as epoch seconds.

    ``N/A``/``Unknown``/``None`` give None. Raises SchedulerOutputError for any
    other text (a user-set ``SLURM_TIME_FORMAT`` changes what squeue prints).
    """
    text = text.strip()
    if text in _NO_TIME:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        raise SchedulerOutputError(
            "a Slurm time (is SLURM_TIME_FORMAT set? unset it for the agent)", text
        ) from None


def parse_slurm_duration_min(text: str) -> int | None:
    """A Slurm time limit as whole minutes (seconds rounded up); None for unlimited.

    Accepts every form Slurm prints or takes: ``MM``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``, ``infinite``/``UNLIMITED``.
    Raises SchedulerOutputError otherwise.
    """
    text = text.strip()
    if text in _UNLIMITED or text.lower() in ("infinite", "unlimited", "n/a"):
        return None
    m = _TIME_RE.fullmatch(text)
    if m is None:
        raise SchedulerOutputError("a Slurm time limit", text)
    days, a, b, c = m.group(1), m.group(2), m.group(3), m.group(4)
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        # D-HH, D-HH:MM, D-HH:MM:SS
        hours, mins, secs = (parts + [0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + mins * 60 + secs
    elif len(parts) == 1:
        total = parts[0] * 60
    elif len(parts) == 2:
        total = parts[0] * 60 + parts[1]
    else:
        total = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return -(-total // 60)


def format_wall_time(minutes: int) -> str:
    """``--time`` value: ``H:MM:00`` (Slurm also reads plain minutes, but this is unambiguous)."""
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def _int_or_none(text: str, what: str) -> int | None:
    text = text.strip().rstrip("+")
    if text in _UNLIMITED or text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise SchedulerOutputError(what, text) from None


def _gpus(gres: str) -> int | None:
    """GPUs per node from a GRES string (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    found = [int(n) for n in _GPU_RE.findall(gres)]
    return sum(found) if found else None


class SlurmScheduler(Scheduler):
    """Slurm adapter.

    ``gpus_per_node`` (optional) is handed to the per-node pilot step in
    :meth:`node_launch_argv`: a Slurm step sees no GPUs unless it asks.
    """

    name = "slurm"
    directive_prefix = "#SBATCH"

    def __init__(self, *, gpus_per_node: int | None = None) -> None:
        self.gpus_per_node = gpus_per_node

    def directives(self, req: JobRequest) -> list[str]:
        """``#SBATCH`` lines; ConfigError for values a directive cannot hold."""
        check_request(req)
        p = self.directive_prefix
        lines = [
            f"{p} --job-name={directive_value('job name', req.job_name, quote=True)}",
            f"{p} --nodes={req.nodes}",
            f"{p} --time={format_wall_time(req.wall_time_min)}",
        ]
        if req.queue:
            lines.append(f"{p} --partition={directive_value('partition', req.queue)}")
        if req.project:
            lines.append(f"{p} --account={directive_value('account', req.project)}")
        out = directive_value("work directory", req.workdir.rstrip("/") + "/%j.out", quote=True)
        err = directive_value("work directory", req.workdir.rstrip("/") + "/%j.err", quote=True)
        lines += [f"{p} --output={out}", f"{p} --error={err}"]
        return lines

    def submit_argv(self, script_path: str, req: JobRequest) -> list[str]:
        return ["sbatch", "--parsable", script_path]

    def parse_submit_output(self, stdout: str) -> str:
        """The id from ``sbatch --parsable`` (``1234`` or ``1234;cluster``)."""
        for line in stdout.splitlines():
            job_id = line.strip().split(";", 1)[0]
            if job_id.isdigit():
                return job_id
        raise SchedulerOutputError("a job id from sbatch --parsable", stdout)

    def status_argv(self, user: str | None) -> list[str]:
        # --states=all keeps finished jobs visible for MinJobAge (300 s by
        # default); after that they vanish and the caller counts them finished.
        argv = ["squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"]
        if user:
            argv += ["-u", user]
        return argv

    def parse_status_output(self, stdout: str) -> list[JobStatus]:
        """squeue lines in :data:`SQUEUE_FORMAT`; SchedulerOutputError for a malformed line."""
        jobs = []
        for line in stdout.splitlines():
            if not line.strip() or line.startswith("JOBID|"):
                continue
            fields = line.split("|", SQUEUE_FIELDS - 1)
            if len(fields) != SQUEUE_FIELDS:
                raise SchedulerOutputError(f"a squeue line of format {SQUEUE_FORMAT}", line)
            job_id, native, nodes, part, start, end, why, name = fields
            state = slurm_state(native)
            start_t = parse_slurm_time(start)
            end_t = parse_slurm_time(end)
            # For waiting jobs squeue prints estimates (expected start, start +
            # limit); only times that happened are reported.
            if state == "queued":
                start_t = end_t = None
            elif state == "running":
                end_t = None
            word = native.split(" ", 1)[0]
            reason = word if state == "finished" else ("" if why == "None" else why)
            jobs.append(JobStatus(
                scheduler_id=job_id.strip(), state=state, native_state=native,
                name=name, nodes=_int_or_none(nodes, "a squeue node count"), queue=part,
                start_time=start_t, end_time=end_t, reason=reason,
            ))
        return jobs

    def cancel_argv(self, scheduler_id: str) -> list[str]:
        return ["scancel", scheduler_id]

    def partitions_argv(self) -> list[str] | None:
        return ["sinfo", "--noheader", f"--format={SINFO_FORMAT}"]

    def parse_partitions_output(self, stdout: str) -> list[PartitionLimits]:
        """sinfo lines in :data:`SINFO_FORMAT`, one PartitionLimits per partition.

        sinfo splits a partition over several lines when its nodes differ
        (CPUs, GRES, state); node counts are summed and the largest node
        kept, so a task that fits some node of the partition is not refused.
        Raises SchedulerOutputError for a malformed line.
        """
        merged: dict[str, PartitionLimits] = {}
        for line in stdout.splitlines():
            if not line.strip() or line.startswith("PARTITION|"):
                continue
            fields = line.split("|")
            if len(fields) != SINFO_FIELDS:
                raise SchedulerOutputError(f"a sinfo line of format {SINFO_FORMAT}", line)
            name, avail, max_time, size, nodes, cpus, gres = (f.strip() for f in fields)
            name = name.rstrip("*")
            max_nodes = _int_or_none(size.rsplit("-", 1)[-1], "a sinfo job size")
            cur = PartitionLimits(
                name=name,
                max_nodes=max_nodes,
                max_wall_min=parse_slurm_duration_min(max_time),
                total_nodes=_int_or_none(nodes, "a sinfo node count"),
                cores_per_node=_int_or_none(cpus, "a sinfo CPU count"),
                gpus_per_node=_gpus(gres),
                available=avail.rstrip("*") == "up",
            )
            prev = merged.get(name)
            merged[name] = cur if prev is None else _merge(prev, cur)
        return list(merged.values())

    def node_launch_argv(self, nodes: int) -> list[str]:
        """``srun`` starting one pilot per node of the allocation.

        Since Slurm 21.08 a step without ``--exact`` gets every CPU and all
        memory the job holds on its nodes, so the pilot and the tasks it forks
        are not squeezed onto one CPU; ``--cpu-bind=none`` keeps task/affinity
        from pinning them to one core anyway. ``--overlap`` lets the steps the
        pilot later starts (``srun`` of an MPI task) share those resources:
        without it they would wait for this step, which lasts the whole job.
        GPUs are not given to a step unless asked, hence ``--gpus-per-node``.
        """
        argv = [
            "srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--overlap", "--cpu-bind=none", "--kill-on-bad-exit=0",
        ]
        if self.gpus_per_node:
            argv.append(f"--gpus-per-node={self.gpus_per_node}")
        return argv


def _merge(a: PartitionLimits, b: PartitionLimits) -> PartitionLimits:
    """Two sinfo lines of one partition: limits are the partition's, nodes add up."""

    def most(x: int | None, y: int | None) -> int | None:
        return x if y is None else y if x is None else max(x, y)

    total = None if a.total_nodes is None or b.total_nodes is None else a.total_nodes + b.total_nodes
    return PartitionLimits(
        name=a.name, max_nodes=a.max_nodes, max_wall_min=a.max_wall_min, total_nodes=total,
        cores_per_node=most(a.cores_per_node, b.cores_per_node),
        gpus_per_node=most(a.gpus_per_node, b.gpus_per_node),
        available=a.available or b.available,
    )
