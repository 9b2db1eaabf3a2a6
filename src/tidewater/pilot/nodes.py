"""Allocation discovery: which nodes this batch job has, and until when.

Pure: :func:`discover` reads a recorded environment (a ``Mapping``), files
only through the injected ``read_file``, and never the clock (``now`` is
passed in). The pilot's driver calls it once at start with ``os.environ``,
``socket.gethostname()``, ``os.cpu_count()`` and ``time.time()``; tests call
it with environments recorded on real machines.

Sources, first match wins::

    SLURM_JOB_ID          -> slurm   (SLURM_JOB_NODELIST, SLURM_JOB_CPUS_PER_NODE, ...)
    PBS_JOBID             -> pbs     (PBS_NODEFILE, NCPUS)
    LSB_JOBID             -> lsf     (LSB_MCPU_HOSTS, LSB_DJOB_HOSTFILE)
    COBALT_JOBID          -> cobalt  (COBALT_PARTNAME, COBALT_JOBSIZE, COBALT_ENDTIME)
    TIDEWATER_LOCAL_*     -> local   (N nodes, all named ``hostname``)
    nothing               -> local   (this one host)

``TIDEWATER_JOB_END`` (epoch seconds, written by Tidewater's batch script as
script start + wall time) gives the end time for every scheduler and wins
over what the scheduler says: it is the one value we set ourselves.

Where the scheduler does not say how many cores or GPUs a node has, the
caller's ``local_cores``/``local_gpus`` are used. In head mode (Cobalt's MOM
node, Summit's batch node) the pilot does not run on a compute node, so the
caller should pass the site's configured node shape rather than what the
batch host itself has.

The wall-time policy (:func:`admits`, :func:`must_stop`,
:func:`seconds_left`) is here too: it is a function of the allocation's end.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from tidewater.errors import ConfigError

__all__ = [
    "Allocation",
    "Node",
    "Scheduler",
    "admits",
    "discover",
    "expand_hostlist",
    "must_stop",
    "parse_cobalt_partname",
    "parse_slurm_cpus_per_node",
    "seconds_left",
]

Scheduler = Literal["slurm", "pbs", "lsf", "cobalt", "local"]

MAX_HOSTS = 1_000_000
"""Refuse hostlists that expand to more names than any machine has (``n[0-99999999]``)."""

_TEN_YEARS = 10 * 365 * 86400.0


@dataclass(frozen=True)
class Node:
    """One node of the allocation and what a pilot may use on it."""

    host: str
    cores: int
    gpus: int = 0


@dataclass(frozen=True)
class Allocation:
    """What this batch job has: its scheduler, id, nodes and end time (epoch s, or None)."""

    scheduler: Scheduler
    job_id: str
    nodes: tuple[Node, ...]
    end_time: float | None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The node names, in the scheduler's order."""
        return tuple(n.host for n in self.nodes)


# --------------------------------------------------------------------------- hostlists


def _split_top_level(s: str, whole: str) -> list[str]:
    """Split on commas that are not inside brackets; check the brackets pair up."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(s):
        if ch == "[":
            if depth:
                raise ConfigError(
                    f"hostlist {whole!r}: nested '[' at position {i}; "
                    "write each bracket group separately, like 'a[1-2]b[3-4]'"
                )
            depth = 1
        elif ch == "]":
            if not depth:
                raise ConfigError(f"hostlist {whole!r}: ']' at position {i} without a '['")
            depth = 0
        elif ch == "," and not depth:
            parts.append(s[start:i])
            start = i + 1
    if depth:
        raise ConfigError(f"hostlist {whole!r}: '[' is never closed")
    parts.append(s[start:])
    return parts


_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _expand_ranges(body: str, whole: str) -> list[str]:
    """``001-003,007`` -> ``['001', '002', '003', '007']``; the width of the low end is kept."""
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.fullmatch(item)
        if m is None:
            raise ConfigError(
                f"hostlist {whole!r}: {item!r} in '[{body}]' is not a number or a "
                "range like '001-004'"
            )
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        a, b = int(lo), int(hi)
        if a > b:
            raise ConfigError(f"hostlist {whole!r}: range '{item}' runs backwards")
        if len(out) + b - a + 1 > MAX_HOSTS:
            raise ConfigError(f"hostlist {whole!r} names more than {MAX_HOSTS} hosts")
        # Slurm pads to the width of the low end: nid[008-010] -> nid008 .. nid010.
        width = len(lo)
        out.extend(f"{i:0{width}d}" for i in range(a, b + 1))
    return out


def _expand_one(expr: str, whole: str) -> list[str]:
    """One host expression, ``a[01-02]b[1-2]-ib``: the cartesian product of its groups."""
    if not expr:
        raise ConfigError(f"hostlist {whole!r} has an empty host name (two commas in a row?)")
    pieces: list[list[str]] = []
    pos = 0
    while pos < len(expr):
        open_ = expr.find("[", pos)
        if open_ < 0:
            pieces.append([expr[pos:]])
            break
        if open_ > pos:
            pieces.append([expr[pos:open_]])
        close = expr.index("]", open_)  # brackets were checked by _split_top_level
        body = expr[open_ + 1 : close]
        if not body:
            raise ConfigError(f"hostlist {whole!r}: empty brackets '[]'")
        pieces.append(_expand_ranges(body, whole))
        pos = close + 1
    total = math.prod(len(p) for p in pieces)
    if total > MAX_HOSTS:
        raise ConfigError(f"hostlist {whole!r} names more than {MAX_HOSTS} hosts")
    return ["".join(combo) for combo in itertools.product(*pieces)]


def expand_hostlist(s: str) -> list[str]:
    """Expand Slurm's compressed hostlist syntax into host names, in order.

    ``nid[001-003,007],login1`` -> ``nid001 nid002 nid003 nid007 login1``;
    ``node[1-2]-ib`` -> ``node1-ib node2-ib``; several bracket groups in one
    name are a cartesian product (``a[01-02]b[1-2]`` -> ``a01b1 a01b2 a02b1
    a02b2``). Zero padding of the low end of a range is kept. An empty or
    blank string expands to ``[]``.

    Raises ConfigError for malformed input: unbalanced or nested brackets,
    empty names or brackets, non-numeric or backwards ranges, whitespace
    inside the list, or more than ``MAX_HOSTS`` names.
    """
    text = s.strip()
    if not text:
        return []
    if any(ch.isspace() for ch in text):
        raise ConfigError(f"hostlist {s!r} contains whitespace; separate hosts with commas")
    hosts: list[str] = []
    for expr in _split_top_level(text, s):
        hosts.extend(_expand_one(expr, s))
        if len(hosts) > MAX_HOSTS:
            raise ConfigError(f"hostlist {s!r} names more than {MAX_HOSTS} hosts")
    return hosts


_CPUS_ITEM = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def parse_slurm_cpus_per_node(s: str) -> list[int]:
    """Expand ``SLURM_JOB_CPUS_PER_NODE`` (``36(x2),72``) into one count per node.

    Raises ConfigError when an item is not ``N`` or ``N(xK)``, or the list is empty.
    """
    text = s.strip()
    if not text:
        raise ConfigError("SLURM_JOB_CPUS_PER_NODE is empty")
    out: list[int] = []
    for item in text.split(","):
        m = _CPUS_ITEM.fullmatch(item.strip())
        if m is None:
            raise ConfigError(
                f"SLURM_JOB_CPUS_PER_NODE={s!r}: cannot read {item!r} "
                "(expected a count like '72' or '36(x2)')"
            )
        repeat = int(m.group(2)) if m.group(2) is not None else 1
        if repeat < 1 or repeat > MAX_HOSTS:
            raise ConfigError(f"SLURM_JOB_CPUS_PER_NODE={s!r}: bad repeat count in {item!r}")
        out.extend([int(m.group(1))] * repeat)
    return out


def parse_cobalt_partname(s: str) -> list[str]:
    """``COBALT_PARTNAME`` (``3824-3827,3830``) -> Cray node names ``nid03824`` ...

    Cobalt on Cray XC names a partition by nid numbers; the host names are
    ``nid`` plus the number padded to five digits. A partition name that is
    not made of numbers (Cobalt on clusters such as ThetaGPU names hosts) is
    read as a Slurm-style hostlist.

    Raises ConfigError for a malformed value.
    """
    text = s.strip()
    if not text:
        raise ConfigError("COBALT_PARTNAME is empty")
    if not re.fullmatch(r"[\d,\-]+", text):
        return expand_hostlist(text)
    nids: list[str] = []
    for item in text.split(","):
        m = _RANGE.fullmatch(item)
        if m is None:
            raise ConfigError(
                f"COBALT_PARTNAME={s!r}: cannot read {item!r} (expected '3824' or '3824-3827')"
            )
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if a > b:
            raise ConfigError(f"COBALT_PARTNAME={s!r}: range {item!r} runs backwards")
        if len(nids) + b - a + 1 > MAX_HOSTS:
            raise ConfigError(f"COBALT_PARTNAME={s!r} names more than {MAX_HOSTS} nodes")
        nids.extend(f"nid{n:05d}" for n in range(a, b + 1))
    return nids


# --------------------------------------------------------------------------- env helpers


def _get(env: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` that is set to something other than blank."""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _int(name: str, raw: str, *, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _end_time(name: str, raw: str, now: float) -> float | None:
    """An epoch-seconds end time; ``0`` means none (what schedulers write for 'no limit')."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a time in seconds since the epoch") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} is not a time in seconds since the epoch")
    if value == 0:
        return None
    if value > now + _TEN_YEARS:
        # Slurm writes one year out for an unlimited job; ten years out is a unit error.
        raise ConfigError(
            f"{name}={raw!r} is more than ten years from now; it must be seconds "
            "since the epoch, not milliseconds"
        )
    return value


def _read(read_file: Callable[[str], str], var: str, path: str) -> str:
    try:
        return read_file(path)
    except OSError as e:
        raise ConfigError(f"cannot read {var}={path!r}: {e}") from e


def _slot_counts(text: str) -> dict[str, int]:
    """A one-line-per-slot host file -> {host: lines}, hosts in first-seen order."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        host = line.strip()
        if host and not host.startswith("#"):
            counts[host] = counts.get(host, 0) + 1
    return counts


# --------------------------------------------------------------------------- per scheduler


def _slurm(
    env: Mapping[str, str], hostname: str, local_cores: int, local_gpus: int, now: float
) -> Allocation:
    job_id = _get(env, "SLURM_JOB_ID", "SLURM_JOBID") or ""
    nodelist = _get(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    hosts = expand_hostlist(nodelist) if nodelist else [hostname]
    if not hosts:
        hosts = [hostname]
    cpus_raw = _get(env, "SLURM_JOB_CPUS_PER_NODE")
    if cpus_raw is not None:
        # Slurm counts "CPUs", which are hardware threads where a node is
        # configured with ThreadsPerCore > 1 (Perlmutter reports 256 for 128
        # cores). It is what Slurm will let a step bind to, so it is the slot
        # count a pilot can grant.
        cores = parse_slurm_cpus_per_node(cpus_raw)
        if len(cores) != len(hosts):
            raise ConfigError(
                f"SLURM_JOB_CPUS_PER_NODE={cpus_raw!r} gives {len(cores)} node(s) but "
                f"SLURM_JOB_NODELIST={nodelist!r} names {len(hosts)}"
            )
    else:
        cores = [local_cores] * len(hosts)
    gpus = local_gpus
    on_node = _get(env, "SLURM_GPUS_ON_NODE")
    job_gpus = _get(env, "SLURM_JOB_GPUS")
    if on_node is not None:
        gpus = _int("SLURM_GPUS_ON_NODE", on_node, minimum=0)
    elif job_gpus is not None:
        ids = [g.strip() for g in job_gpus.split(",")]
        if not all(g.isdigit() for g in ids):
            raise ConfigError(f"SLURM_JOB_GPUS={job_gpus!r} is not a list of GPU indices")
        gpus = len(ids)
    end_raw = _get(env, "SLURM_JOB_END_TIME")
    end = _end_time("SLURM_JOB_END_TIME", end_raw, now) if end_raw else None
    nodes = tuple(Node(h, c, gpus) for h, c in zip(hosts, cores, strict=True))
    return Allocation("slurm", job_id, nodes, end)


def _pbs(
    env: Mapping[str, str],
    read_file: Callable[[str], str],
    hostname: str,
    local_cores: int,
    local_gpus: int,
) -> Allocation:
    job_id = _get(env, "PBS_JOBID") or ""
    nodefile = _get(env, "PBS_NODEFILE")
    counts = _slot_counts(_read(read_file, "PBS_NODEFILE", nodefile)) if nodefile else {}
    if not counts:
        counts = {hostname: 1}
    ncpus_raw = _get(env, "NCPUS", "PBS_NCPUS")
    ncpus = _int("NCPUS", ncpus_raw, minimum=1) if ncpus_raw else None
    one_line_each = all(n == 1 for n in counts.values())

    def cores_of(lines: int) -> int:
        # PBS_NODEFILE has one line per MPI slot (mpiprocs), which on most
        # machines is one per chunk: Polaris lists each node once. NCPUS (the
        # ncpus of the chunk) is the real core count when PBS exports it; a
        # file with one line per host says nothing about cores at all.
        if ncpus is not None:
            return max(ncpus, lines)
        if one_line_each:
            return local_cores
        return lines

    nodes = tuple(Node(h, cores_of(n), local_gpus) for h, n in counts.items())
    return Allocation("pbs", job_id, nodes, None)


# Summit-style LSF systems list the launch ("batch") node first in
# LSB_MCPU_HOSTS / LSB_DJOB_HOSTFILE with one slot: it is the shared node the
# batch script runs on, not a compute node of the job, and jsrun never places
# ranks there. Login nodes appear the same way on some sites.
_LSF_LAUNCH_PREFIXES = ("batch", "login")


def _lsf(
    env: Mapping[str, str],
    read_file: Callable[[str], str],
    hostname: str,
    local_cores: int,
    local_gpus: int,
) -> Allocation:
    job_id = _get(env, "LSB_JOBID") or ""
    counts: dict[str, int] = {}
    mcpu = _get(env, "LSB_MCPU_HOSTS")
    hostfile = _get(env, "LSB_DJOB_HOSTFILE")
    if mcpu is not None:
        tokens = mcpu.split()
        if len(tokens) % 2:
            raise ConfigError(
                f"LSB_MCPU_HOSTS={mcpu!r} should be pairs of 'host slots', "
                f"but has {len(tokens)} words"
            )
        for host, n in zip(tokens[::2], tokens[1::2], strict=True):
            counts[host] = counts.get(host, 0) + _int(f"LSB_MCPU_HOSTS slots of {host}", n,
                                                      minimum=1)
    elif hostfile is not None:
        counts = _slot_counts(_read(read_file, "LSB_DJOB_HOSTFILE", hostfile))
    compute = {h: n for h, n in counts.items() if not h.startswith(_LSF_LAUNCH_PREFIXES)}
    if compute:
        counts = compute  # else: a cluster whose compute hosts happen to be named so
    if not counts:
        counts = {hostname: local_cores}
    nodes = tuple(Node(h, n, local_gpus) for h, n in counts.items())
    return Allocation("lsf", job_id, nodes, None)


def _cobalt(
    env: Mapping[str, str], hostname: str, local_cores: int, local_gpus: int, now: float
) -> Allocation:
    job_id = _get(env, "COBALT_JOBID") or ""
    part = _get(env, "COBALT_PARTNAME")
    size_raw = _get(env, "COBALT_JOBSIZE")
    size = _int("COBALT_JOBSIZE", size_raw, minimum=1) if size_raw else None
    if part is not None:
        hosts = parse_cobalt_partname(part)
        if size is not None and size != len(hosts):
            raise ConfigError(
                f"COBALT_PARTNAME={part!r} names {len(hosts)} node(s) but "
                f"COBALT_JOBSIZE={size_raw!r}"
            )
    elif size is not None and size > 1:
        raise ConfigError(
            f"COBALT_JOBSIZE={size_raw!r} but COBALT_PARTNAME is not set, so the nodes "
            "cannot be named"
        )
    else:
        hosts = [hostname]
    end_raw = _get(env, "COBALT_ENDTIME")
    end = _end_time("COBALT_ENDTIME", end_raw, now) if end_raw else None
    nodes = tuple(Node(h, local_cores, local_gpus) for h in hosts)
    return Allocation("cobalt", job_id, nodes, end)


def _local(
    env: Mapping[str, str], hostname: str, local_cores: int, local_gpus: int
) -> Allocation:
    job_id = _get(env, "TIDEWATER_LOCAL_JOBID") or ""
    n_raw = _get(env, "TIDEWATER_LOCAL_NODES")
    n = _int("TIDEWATER_LOCAL_NODES", n_raw, minimum=1) if n_raw else 1
    if n > MAX_HOSTS:
        raise ConfigError(f"TIDEWATER_LOCAL_NODES={n_raw!r} is more than {MAX_HOSTS}")
    nodes = tuple(Node(hostname, local_cores, local_gpus) for _ in range(n))
    return Allocation("local", job_id, nodes, None)


def discover(
    env: Mapping[str, str],
    *,
    read_file: Callable[[str], str],
    hostname: str,
    local_cores: int,
    local_gpus: int,
    now: float,
) -> Allocation:
    """Find the allocation this process runs in from its environment.

    Tries Slurm, PBS, LSF, Cobalt, then Tidewater's local variables, and
    falls back to one local node (``hostname`` with ``local_cores`` and
    ``local_gpus``). Host files (``PBS_NODEFILE``, ``LSB_DJOB_HOSTFILE``)
    are read through ``read_file``. ``TIDEWATER_JOB_END`` sets the end time
    whatever the scheduler. ``now`` is only used to reject an end time that
    is implausibly far away (milliseconds instead of seconds).

    GPU visibility variables (``CUDA_VISIBLE_DEVICES`` ...) describe a
    process, not a node, and are ignored.

    Raises ConfigError when a variable is malformed, disagrees with another,
    or a host file cannot be read (``read_file`` raised ``OSError``).
    """
    if local_cores < 1:
        raise ConfigError(f"local_cores must be at least 1, not {local_cores}")
    if local_gpus < 0:
        raise ConfigError(f"local_gpus cannot be negative ({local_gpus})")
    if _get(env, "SLURM_JOB_ID", "SLURM_JOBID"):
        alloc = _slurm(env, hostname, local_cores, local_gpus, now)
    elif _get(env, "PBS_JOBID"):
        alloc = _pbs(env, read_file, hostname, local_cores, local_gpus)
    elif _get(env, "LSB_JOBID"):
        alloc = _lsf(env, read_file, hostname, local_cores, local_gpus)
    elif _get(env, "COBALT_JOBID"):
        alloc = _cobalt(env, hostname, local_cores, local_gpus, now)
    else:
        alloc = _local(env, hostname, local_cores, local_gpus)
    ours = _get(env, "TIDEWATER_JOB_END")
    if ours is not None:
        alloc = Allocation(
            alloc.scheduler, alloc.job_id, alloc.nodes, _end_time("TIDEWATER_JOB_END", ours, now)
        )
    return alloc


# --------------------------------------------------------------------------- wall time


def _check_nonnegative(name: str, value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ConfigError(f"{name} must be a non-negative number of seconds, not {value!r}")


def seconds_left(now: float, end_time: float | None) -> float | None:
    """Seconds until ``end_time`` (never below 0), or None when the job has no end."""
    if end_time is None:
        return None
    return max(0.0, end_time - now)


def admits(now: float, end_time: float | None, wall_time: float | None, margin: float) -> bool:
    """Whether a task may start now without being cut off by the end of the job.

    The usable window ends ``margin`` seconds before ``end_time`` (time to
    stage out and report). A task with a wall-time estimate is admitted only
    if it would finish within the window (``now + wall_time <= end - margin``);
    one without an estimate is admitted while the window is open
    (``now < end - margin``). Without an end time every task is admitted.

    Raises ConfigError for a negative or NaN ``wall_time`` or ``margin``.
    """
    _check_nonnegative("margin", margin)
    if wall_time is not None:
        _check_nonnegative("wall_time", wall_time)
    if end_time is None:
        return True
    deadline = end_time - margin
    if now >= deadline:
        return False
    return wall_time is None or now + wall_time <= deadline


def must_stop(now: float, end_time: float | None, grace: float) -> bool:
    """Whether it is time to terminate running tasks and report them RUN_TIMEOUT.

    True from ``grace`` seconds before ``end_time`` on, so the pilot can kill
    its tasks and its reports reach the controller before the scheduler kills
    the job. Never true without an end time.

    Raises ConfigError for a negative or NaN ``grace``.
    """
    _check_nonnegative("grace", grace)
    return end_time is not None and now >= end_time - grace
