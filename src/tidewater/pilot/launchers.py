"""MPI launcher command lines: pure argv builders.

A builder turns a :class:`LaunchSpec` (which hosts, how many ranks per
node, threads and GPUs per rank, binding, environment) and a task's command
into the argv of ``mpiexec``/``mpirun``/``srun``/``aprun``/``jsrun``. Every
value is one argv element; nothing is ever spliced into a shell string, so a
parameter like ``a b; rm -rf ~`` reaches the task as it was written.

Environment: ``OMP_NUM_THREADS`` (= ``threads_per_rank``, unless
``spec.env`` sets it) and ``spec.env`` are passed with the launcher's own
flag (``-genv``, ``-x``, ``--env``, ``-e``, ``-E``), because some launchers
(Open MPI) forward nothing else to remote nodes. ``srun`` has no flag that
takes arbitrary values (``--export`` splits on commas), so its ranks start
under ``env NAME=VALUE ... cmd``.

CPU binding: ``cpu_bind="core"`` is the portable request (each rank on
``threads_per_rank`` cores of its own), ``None`` asks for no binding, and any
other string is passed verbatim as the launcher's own binding argument.
Launchers bind from the lowest-numbered cores of a node and know nothing of
other tasks the pilot runs there, so binding is right for a task that owns
its nodes (every multi-node task: the controller reserves whole nodes) and
wrong for one of several tasks packed onto a node: pass ``cpu_bind=None``
for those.

GPUs: when ``spec.gpu_ids`` is empty and ``gpus_per_rank > 0`` the task owns
the GPUs of its nodes and the launcher's own per-rank assignment is used
where it has one (``srun --gpus-per-task``, ``jsrun -g``, Hydra
``-gpus-per-proc``). When the pilot picked the devices (``gpu_ids``
non-empty, e.g. 2 of the 4 GPUs of a shared node) it exports them with
:func:`gpu_env` through ``spec.env`` and the builders leave GPU assignment
alone: Hydra's ``-gpus-per-proc``, for one, numbers devices from 0 and
would overwrite the pilot's choice (checked with MPICH 4.0.2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tidewater.errors import ConfigError

__all__ = [
    "LAUNCHERS",
    "Builder",
    "GpuVendor",
    "LaunchSpec",
    "aprun",
    "assign_gpus",
    "build",
    "cray_mpiexec",
    "gpu_env",
    "jsrun",
    "mpich",
    "openmpi",
    "rank_env",
    "srun",
    "task_footprint",
    "wrap",
]

GpuVendor = Literal["nvidia", "amd", "intel"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LaunchSpec:
    """Where and how to start the ranks of one task.

    ``hosts``: the nodes, in order (the first gets rank 0). ``gpu_ids``: the
    GPU ids to use on each node when the pilot chose them (see the module
    docstring). ``env``: extra variables for every rank.

    Raises ConfigError on construction for no hosts, a host name with a
    comma, colon or whitespace (it would break the launchers' host lists),
    counts below their minimum, repeated or negative GPU ids, fewer GPU ids
    than the ranks of a node need, or an environment name that is not a
    shell identifier.
    """

    hosts: tuple[str, ...]
    ranks_per_node: int = 1
    threads_per_rank: int = 1
    gpus_per_rank: int = 0
    cpu_bind: str | None = "core"
    gpu_ids: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Accept any sequence / mapping, but keep our own immutable copies.
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "gpu_ids", tuple(self.gpu_ids))
        object.__setattr__(self, "env", dict(self.env))
        if not self.hosts:
            raise ConfigError("a launch needs at least one host")
        for h in self.hosts:
            if not h or any(c in h for c in ",: \t\n"):
                raise ConfigError(f"host name {h!r} is empty or contains ',', ':' or whitespace")
        if self.ranks_per_node < 1:
            raise ConfigError(f"ranks_per_node must be at least 1, not {self.ranks_per_node}")
        if self.threads_per_rank < 1:
            raise ConfigError(f"threads_per_rank must be at least 1, not {self.threads_per_rank}")
        if self.gpus_per_rank < 0:
            raise ConfigError(f"gpus_per_rank cannot be negative ({self.gpus_per_rank})")
        if self.cpu_bind is not None and not self.cpu_bind.strip():
            raise ConfigError("cpu_bind must be 'core', a launcher binding argument, or None")
        if any(g < 0 for g in self.gpu_ids) or len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ConfigError(f"gpu_ids {self.gpu_ids} must be distinct non-negative ids")
        need = self.ranks_per_node * self.gpus_per_rank
        if self.gpu_ids and need > len(self.gpu_ids):
            raise ConfigError(
                f"{self.ranks_per_node} rank(s) x {self.gpus_per_rank} GPU(s) per node need "
                f"{need} GPUs but gpu_ids has {len(self.gpu_ids)}: {self.gpu_ids}"
            )
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise ConfigError(f"environment variable name {name!r} is not valid")

    @property
    def nodes(self) -> int:
        """Number of nodes."""
        return len(self.hosts)

    @property
    def total_ranks(self) -> int:
        """Ranks over all nodes."""
        return len(self.hosts) * self.ranks_per_node


Builder = Callable[[LaunchSpec, Sequence[str]], list[str]]


def rank_env(spec: LaunchSpec) -> dict[str, str]:
    """The variables every rank gets: ``OMP_NUM_THREADS`` then ``spec.env`` (which wins)."""
    return {"OMP_NUM_THREADS": str(spec.threads_per_rank), **spec.env}


def _command(cmd: Sequence[str]) -> list[str]:
    if isinstance(cmd, str):
        raise ConfigError(f"the command must be a list of arguments, not the string {cmd!r}")
    out = list(cmd)
    if not out or not out[0]:
        raise ConfigError("the command to launch is empty")
    return out


# --------------------------------------------------------------------------- builders


def mpich(spec: LaunchSpec, cmd: Sequence[str]) -> list[str]:
    """MPICH's Hydra ``mpiexec`` (also Intel MPI, MVAPICH): ``-n -ppn -hosts -bind-to -genv``.

    ``cpu_bind="core"`` becomes ``-bind-to core:T`` (each rank bound to T
    cores); ``None`` leaves Hydra's default (no binding). ``-gpus-per-proc``
    needs MPICH 4.0 or later and is only given when the task owns its GPUs.

    Raises ConfigError for an empty command.
    """
    argv = [
        "mpiexec",
        "-n", str(spec.total_ranks),
        "-ppn", str(spec.ranks_per_node),
        "-hosts", ",".join(spec.hosts),
    ]
    if spec.cpu_bind == "core":
        argv += ["-bind-to", f"core:{spec.threads_per_rank}"]
    elif spec.cpu_bind is not None:
        argv += ["-bind-to", spec.cpu_bind]
    if spec.gpus_per_rank and not spec.gpu_ids:
        argv += ["-gpus-per-proc", str(spec.gpus_per_rank)]
    for name, value in rank_env(spec).items():
        argv += ["-genv", name, value]
    return argv + _command(cmd)


def cray_mpiexec(spec: LaunchSpec, cmd: Sequence[str]) -> list[str]:
    """HPE Cray PALS ``mpiexec`` (Polaris, Aurora): ``-n --ppn --hosts --depth --cpu-bind --env``.

    ``cpu_bind="core"`` becomes ``--depth T --cpu-bind depth`` (rank i on
    cores i*T .. i*T+T-1); ``None`` becomes ``--cpu-bind none``. PALS has
    no per-rank GPU option; GPU visibility comes from ``spec.env``.

    Raises ConfigError for an empty command.
    """
    argv = [
        "mpiexec",
        "-n", str(spec.total_ranks),
        "--ppn", str(spec.ranks_per_node),
        "--hosts", ",".join(spec.hosts),
        "--depth", str(spec.threads_per_rank),
    ]
    if spec.cpu_bind == "core":
        argv += ["--cpu-bind", "depth"]
    else:
        argv += ["--cpu-bind", spec.cpu_bind or "none"]
    for name, value in rank_env(spec).items():
        argv += ["--env", f"{name}={value}"]
    return argv + _command(cmd)


def openmpi(spec: LaunchSpec, cmd: Sequence[str], *, allow_run_as_root: bool = False) -> list[str]:
    """Open MPI ``mpirun``: ``-np --map-by ppr:RPN:node:PE=T --bind-to core -H h:RPN -x``.

    ``--allow-run-as-root`` is added only when asked (containers, CI): Open
    MPI refuses root on purpose. Open MPI forwards to remote nodes only the
    variables given with ``-x``, so GPU visibility must be in ``spec.env``.

    Raises ConfigError for an empty command.
    """
    rpn = spec.ranks_per_node
    argv = ["mpirun", "-np", str(spec.total_ranks)]
    if spec.cpu_bind == "core":
        argv += ["--map-by", f"ppr:{rpn}:node:PE={spec.threads_per_rank}", "--bind-to", "core"]
    else:
        argv += ["--map-by", f"ppr:{rpn}:node", "--bind-to", spec.cpu_bind or "none"]
    argv += ["-H", ",".join(f"{h}:{rpn}" for h in spec.hosts)]
    if allow_run_as_root:
        argv.append("--allow-run-as-root")
    for name, value in rank_env(spec).items():
        argv += ["-x", f"{name}={value}"]
    return argv + _command(cmd)


def srun(spec: LaunchSpec, cmd: Sequence[str], *, overlap: bool = True) -> list[str]:
    """Slurm ``srun`` as a job step inside the current allocation.

    ``--nodes --ntasks --ntasks-per-node --cpus-per-task --nodelist``, with
    ``--cpu-bind=cores`` (or ``=none``, or ``=<cpu_bind>``) and
    ``--gpus-per-task`` when the task owns its GPUs.

    ``overlap`` (default): the pilot itself runs as a step holding every CPU
    of its nodes, and since Slurm 20.11 a new step waits for CPUs that
    another step holds, so a task step must say ``--overlap`` to run at all.
    Overlapping steps are not kept apart by Slurm; the pilot, which knows
    what it has handed out, does that. For the same reason ``--exact`` is
    not given: with ``--overlap`` every step could be handed the same
    lowest-numbered CPUs. Pass ``overlap=False`` when the pilot does not run
    inside the allocation's steps (head mode from the batch script).

    Environment goes through ``env NAME=VALUE ...`` because ``--export``
    cannot carry values with commas.

    Raises ConfigError for an empty command, or one whose first word
    contains ``=`` (``env`` would take it for a variable).
    """
    command = _command(cmd)
    if "=" in command[0]:
        raise ConfigError(f"cannot launch {command[0]!r} with srun: the program name contains '='")
    argv = [
        "srun",
        "--nodes", str(spec.nodes),
        "--ntasks", str(spec.total_ranks),
        "--ntasks-per-node", str(spec.ranks_per_node),
        "--cpus-per-task", str(spec.threads_per_rank),
        "--nodelist", ",".join(spec.hosts),
    ]
    if spec.cpu_bind == "core":
        argv.append("--cpu-bind=cores")
    else:
        argv.append(f"--cpu-bind={spec.cpu_bind or 'none'}")
    if spec.gpus_per_rank and not spec.gpu_ids:
        argv += ["--gpus-per-task", str(spec.gpus_per_rank)]
    if overlap:
        argv.append("--overlap")
    argv.append("env")
    argv += [f"{name}={value}" for name, value in rank_env(spec).items()]
    return argv + command


_NID = re.compile(r"nid0*(\d+)")


def aprun(spec: LaunchSpec, cmd: Sequence[str]) -> list[str]:
    """Cray ALPS ``aprun`` (Theta, XC40): ``-n -N -d -cc -L nids -e NAME=VALUE``.

    Hosts must be Cray node names (``nid03824``); ``-L`` takes their nid
    numbers. ``cpu_bind="core"`` becomes ``-cc depth`` with ``-d T``;
    ``None`` becomes ``-cc none``. ALPS has no GPU option.

    Raises ConfigError for a host that is not ``nid<number>`` or an empty command.
    """
    nids: list[str] = []
    for h in spec.hosts:
        m = _NID.fullmatch(h)
        if m is None:
            raise ConfigError(f"aprun needs Cray node names like 'nid03824', not {h!r}")
        nids.append(str(int(m.group(1))))
    argv = [
        "aprun",
        "-n", str(spec.total_ranks),
        "-N", str(spec.ranks_per_node),
        "-d", str(spec.threads_per_rank),
        "-cc", "depth" if spec.cpu_bind == "core" else (spec.cpu_bind or "none"),
        "-L", ",".join(nids),
    ]
    for name, value in rank_env(spec).items():
        argv += ["-e", f"{name}={value}"]
    return argv + _command(cmd)


def jsrun(spec: LaunchSpec, cmd: Sequence[str]) -> list[str]:
    """IBM ``jsrun`` (Summit): one resource set per rank.

    ``-n TOTAL -a 1 -c T -g G -r RPN``: each rank is a resource set with T
    cores and G GPUs (jsrun binds the GPUs of a resource set to it), RPN of
    them per host. ``cpu_bind="core"`` becomes ``--bind packed:T``, ``None``
    ``--bind none``. jsrun takes no host list (only an explicit resource
    file): it places resource sets on free hosts of the allocation and keeps
    concurrent jsruns apart itself, so ``spec.hosts`` only sets the node
    count here.

    Raises ConfigError for an empty command.
    """
    t = spec.threads_per_rank
    argv = [
        "jsrun",
        "-n", str(spec.total_ranks),
        "-a", "1",
        "-c", str(t),
        "-g", str(spec.gpus_per_rank),
        "-r", str(spec.ranks_per_node),
        "--bind", f"packed:{t}" if spec.cpu_bind == "core" else (spec.cpu_bind or "none"),
    ]
    for name, value in rank_env(spec).items():
        argv += ["-E", f"{name}={value}"]
    return argv + _command(cmd)


LAUNCHERS: Mapping[str, Builder] = {
    "mpiexec": mpich,
    "mpich": mpich,
    "cray-mpiexec": cray_mpiexec,
    "mpirun": openmpi,
    "openmpi": openmpi,
    "srun": srun,
    "aprun": aprun,
    "jsrun": jsrun,
}
"""Launcher names a site may configure, each with its builder (default options)."""


def build(name: str, spec: LaunchSpec, cmd: Sequence[str]) -> list[str]:
    """The argv that starts ``cmd`` with the launcher called ``name`` (see ``LAUNCHERS``).

    Raises ConfigError for an unknown launcher (listing the known ones) or
    whatever the builder raises.
    """
    builder = LAUNCHERS.get(name)
    if builder is None:
        known = ", ".join(sorted(LAUNCHERS))
        raise ConfigError(f"unknown MPI launcher {name!r}; known launchers: {known}")
    return builder(spec, cmd)


def wrap(launcher: str | None, spec: LaunchSpec, cmd: Sequence[str]) -> list[str]:
    """The argv a pilot runs for a task.

    With a launcher, ``build(launcher, spec, cmd)``. Without one (``None``),
    ``cmd`` unchanged, which is only possible for a single rank on a single
    node: the pilot then runs it by fork/exec on its own node and sets
    :func:`rank_env` on the process itself.

    Raises ConfigError when a multi-rank or multi-node task has no launcher,
    for an unknown launcher, or an empty command.
    """
    if launcher is None:
        if spec.total_ranks != 1:
            raise ConfigError(
                f"this task needs {spec.ranks_per_node} rank(s) on each of {spec.nodes} "
                f"node(s), but the site has no MPI launcher configured; set one of: "
                f"{', '.join(sorted(LAUNCHERS))}"
            )
        return _command(cmd)
    return build(launcher, spec, cmd)


# --------------------------------------------------------------------------- GPUs


_GPU_VARS: Mapping[str, str] = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    # ROCR_VISIBLE_DEVICES, not HIP_VISIBLE_DEVICES: ROCR filters at the
    # runtime layer under HIP, OpenCL and OpenMP offload alike, while HIP's
    # variable only covers HIP and indexes the devices ROCR left visible, so
    # setting both to the same ids would select the wrong (or no) devices.
    "amd": "ROCR_VISIBLE_DEVICES",
    "intel": "ZE_AFFINITY_MASK",
}


def gpu_env(vendor: GpuVendor, gpu_ids: Sequence[int]) -> dict[str, str]:
    """The variable confining a process to ``gpu_ids``: ``{"CUDA_VISIBLE_DEVICES": "2,3"}``.

    NVIDIA -> ``CUDA_VISIBLE_DEVICES``, AMD -> ``ROCR_VISIBLE_DEVICES``,
    Intel -> ``ZE_AFFINITY_MASK``. No ids -> ``{}``: an empty value hides
    every device from CUDA, but the runtimes do not document it alike (an
    empty ``ZE_AFFINITY_MASK`` may read as unset), so it is not a portable
    way to hide GPUs and is not offered.

    Raises ConfigError for an unknown vendor or a negative or repeated id.
    """
    var = _GPU_VARS.get(vendor)
    if var is None:
        raise ConfigError(f"unknown GPU vendor {vendor!r}; known: {', '.join(_GPU_VARS)}")
    ids = list(gpu_ids)
    if any(g < 0 for g in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"GPU ids {ids} must be distinct non-negative ids")
    if not ids:
        return {}
    return {var: ",".join(str(g) for g in ids)}


def assign_gpus(free: Sequence[int], n: int) -> tuple[int, ...]:
    """Choose ``n`` of the ``free`` GPU ids: the lowest consecutive run if one exists.

    Neighbouring ids usually share a switch or link (NVLink pairs, the two
    tiles of a card), so a consecutive run is preferred; otherwise the ``n``
    lowest ids. ``n == 0`` gives ``()``.

    Raises ConfigError when ``n`` is negative or more than are free.
    """
    ids = sorted(set(free))
    if n < 0:
        raise ConfigError(f"cannot assign a negative number of GPUs ({n})")
    if n > len(ids):
        raise ConfigError(f"{n} GPU(s) asked but only {len(ids)} free: {ids}")
    if n == 0:
        return ()
    for i in range(len(ids) - n + 1):
        if ids[i + n - 1] - ids[i] == n - 1:
            return tuple(ids[i : i + n])
    return tuple(ids[:n])


# --------------------------------------------------------------------------- packing


def task_footprint(
    node_cores: int,
    node_gpus: int,
    ranks_per_node: int,
    threads_per_rank: int,
    gpus_per_rank: int,
    node_packing_count: int,
) -> tuple[int, int]:
    """What a single-node task takes from its node: ``(cores, gpus)``.

    Cores: the larger of what the task asks (``ranks * threads``) and its
    share of the node, ``ceil(node_cores / node_packing_count)``, so that no
    more than ``node_packing_count`` tasks are packed onto one node; capped
    at the node. GPUs: what the task asks, raised to its share
    ``ceil(node_gpus / node_packing_count)`` only for a task that uses GPUs
    at all: charging GPUs to CPU-only tasks would idle them, and the core
    share already enforces the packing count.

    Raises ConfigError when the task asks for more than the node has (it
    could never run there) or for counts below their minimum.
    """
    if node_cores < 1 or node_gpus < 0:
        raise ConfigError(f"a node needs at least 1 core and no negative GPUs "
                          f"(got {node_cores} cores, {node_gpus} GPUs)")
    if ranks_per_node < 1 or threads_per_rank < 1 or gpus_per_rank < 0:
        raise ConfigError(
            f"ranks_per_node and threads_per_rank must be at least 1 and gpus_per_rank "
            f"not negative (got {ranks_per_node}, {threads_per_rank}, {gpus_per_rank})"
        )
    if node_packing_count < 1:
        raise ConfigError(f"node_packing_count must be at least 1, not {node_packing_count}")
    need_cores = ranks_per_node * threads_per_rank
    need_gpus = ranks_per_node * gpus_per_rank
    if need_cores > node_cores or need_gpus > node_gpus:
        raise ConfigError(
            f"the task needs {need_cores} core(s) and {need_gpus} GPU(s) per node "
            f"({ranks_per_node} rank(s) x {threads_per_rank} thread(s), {gpus_per_rank} GPU(s) "
            f"each) but a node has {node_cores} core(s) and {node_gpus} GPU(s)"
        )
    cores = min(node_cores, max(need_cores, math.ceil(node_cores / node_packing_count)))
    gpus = 0
    if need_gpus:
        gpus = min(node_gpus, max(need_gpus, math.ceil(node_gpus / node_packing_count)))
    return cores, gpus
