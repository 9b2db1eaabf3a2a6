"""MPI launcher argv builders, GPU selection and the node-packing footprint."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewater.errors import ConfigError
from tidewater.pilot.launchers import (
    LAUNCHERS,
    LaunchSpec,
    aprun,
    assign_gpus,
    build,
    cray_mpiexec,
    gpu_env,
    jsrun,
    mpich,
    openmpi,
    rank_env,
    srun,
    task_footprint,
    wrap,
)

CMD = ["./sim", "--in", "run 1.h5"]
ONE = LaunchSpec(hosts=("nid001236",))
TWO = LaunchSpec(hosts=("nid001236", "nid001237"), ranks_per_node=2, threads_per_rank=3)
GPU = LaunchSpec(hosts=("x3006c0s13b0n0", "x3006c0s13b1n0"), ranks_per_node=4,
                 threads_per_rank=8, gpus_per_rank=1)

# --------------------------------------------------------------------------- MPICH (Hydra)


def test_mpich_one_rank() -> None:
    assert mpich(ONE, CMD) == [
        "mpiexec", "-n", "1", "-ppn", "1", "-hosts", "nid001236",
        "-bind-to", "core:1", "-genv", "OMP_NUM_THREADS", "1", *CMD,
    ]


def test_mpich_two_nodes_two_ranks_three_threads() -> None:
    assert mpich(TWO, CMD) == [
        "mpiexec", "-n", "4", "-ppn", "2", "-hosts", "nid001236,nid001237",
        "-bind-to", "core:3", "-genv", "OMP_NUM_THREADS", "3", *CMD,
    ]


def test_mpich_gpus_and_no_binding() -> None:
    spec = LaunchSpec(hosts=GPU.hosts, ranks_per_node=4, threads_per_rank=8, gpus_per_rank=1,
                      cpu_bind=None)
    assert mpich(spec, CMD) == [
        "mpiexec", "-n", "8", "-ppn", "4", "-hosts", "x3006c0s13b0n0,x3006c0s13b1n0",
        "-gpus-per-proc", "1", "-genv", "OMP_NUM_THREADS", "8", *CMD,
    ]


def test_launchers_leave_gpus_alone_when_the_pilot_chose_them() -> None:
    spec = LaunchSpec(hosts=("n1",), ranks_per_node=2, gpus_per_rank=1, gpu_ids=(2, 3),
                      env=gpu_env("nvidia", (2, 3)))
    argv = mpich(spec, CMD)
    assert "-gpus-per-proc" not in argv
    assert argv[argv.index("CUDA_VISIBLE_DEVICES") + 1] == "2,3"
    argv = srun(spec, CMD)
    assert "--gpus-per-task" not in argv and "CUDA_VISIBLE_DEVICES=2,3" in argv


# --------------------------------------------------------------------------- Cray PALS


def test_cray_mpiexec_one_rank() -> None:
    assert cray_mpiexec(ONE, CMD) == [
        "mpiexec", "-n", "1", "--ppn", "1", "--hosts", "nid001236", "--depth", "1",
        "--cpu-bind", "depth", "--env", "OMP_NUM_THREADS=1", *CMD,
    ]


def test_cray_mpiexec_two_by_two_by_three() -> None:
    assert cray_mpiexec(TWO, CMD) == [
        "mpiexec", "-n", "4", "--ppn", "2", "--hosts", "nid001236,nid001237", "--depth", "3",
        "--cpu-bind", "depth", "--env", "OMP_NUM_THREADS=3", *CMD,
    ]


def test_cray_mpiexec_binding_choices() -> None:
    none = LaunchSpec(hosts=("a",), cpu_bind=None)
    listed = LaunchSpec(hosts=("a",), cpu_bind="list:0-7:8-15")
    assert cray_mpiexec(none, CMD)[9:11] == ["--cpu-bind", "none"]
    assert cray_mpiexec(listed, CMD)[9:11] == ["--cpu-bind", "list:0-7:8-15"]


# --------------------------------------------------------------------------- Open MPI


def test_openmpi_one_rank() -> None:
    assert openmpi(ONE, CMD) == [
        "mpirun", "-np", "1", "--map-by", "ppr:1:node:PE=1", "--bind-to", "core",
        "-H", "nid001236:1", "-x", "OMP_NUM_THREADS=1", *CMD,
    ]


def test_openmpi_two_by_two_by_three_as_root() -> None:
    assert openmpi(TWO, CMD, allow_run_as_root=True) == [
        "mpirun", "-np", "4", "--map-by", "ppr:2:node:PE=3", "--bind-to", "core",
        "-H", "nid001236:2,nid001237:2", "--allow-run-as-root",
        "-x", "OMP_NUM_THREADS=3", *CMD,
    ]


def test_openmpi_never_runs_as_root_unless_asked() -> None:
    assert "--allow-run-as-root" not in openmpi(TWO, CMD)
    assert "--allow-run-as-root" not in build("mpirun", TWO, CMD)


def test_openmpi_without_binding() -> None:
    spec = LaunchSpec(hosts=("a", "b"), ranks_per_node=2, threads_per_rank=3, cpu_bind=None)
    assert openmpi(spec, CMD)[3:7] == ["--map-by", "ppr:2:node", "--bind-to", "none"]


# --------------------------------------------------------------------------- srun


def test_srun_one_rank() -> None:
    assert srun(ONE, CMD) == [
        "srun", "--nodes", "1", "--ntasks", "1", "--ntasks-per-node", "1",
        "--cpus-per-task", "1", "--nodelist", "nid001236", "--cpu-bind=cores", "--overlap",
        "env", "OMP_NUM_THREADS=1", *CMD,
    ]


def test_srun_two_by_two_by_three() -> None:
    assert srun(TWO, CMD) == [
        "srun", "--nodes", "2", "--ntasks", "4", "--ntasks-per-node", "2",
        "--cpus-per-task", "3", "--nodelist", "nid001236,nid001237", "--cpu-bind=cores",
        "--overlap", "env", "OMP_NUM_THREADS=3", *CMD,
    ]


def test_srun_gpus_and_outside_the_pilots_step() -> None:
    argv = srun(GPU, CMD, overlap=False)
    assert argv[:14] == [
        "srun", "--nodes", "2", "--ntasks", "8", "--ntasks-per-node", "4",
        "--cpus-per-task", "8", "--nodelist", "x3006c0s13b0n0,x3006c0s13b1n0",
        "--cpu-bind=cores", "--gpus-per-task", "1",
    ]
    assert "--overlap" not in argv


def test_srun_no_binding_is_explicit() -> None:
    # Slurm may bind by default (TaskPlugin=affinity); None must turn it off.
    assert "--cpu-bind=none" in srun(LaunchSpec(hosts=("a",), cpu_bind=None), CMD)


def test_srun_refuses_a_program_env_would_misread() -> None:
    with pytest.raises(ConfigError, match="contains '='"):
        srun(ONE, ["A=B", "x"])


# --------------------------------------------------------------------------- aprun


def test_aprun_one_rank() -> None:
    assert aprun(LaunchSpec(hosts=("nid03824",)), CMD) == [
        "aprun", "-n", "1", "-N", "1", "-d", "1", "-cc", "depth", "-L", "3824",
        "-e", "OMP_NUM_THREADS=1", *CMD,
    ]


def test_aprun_two_by_two_by_three() -> None:
    spec = LaunchSpec(hosts=("nid03824", "nid00008"), ranks_per_node=2, threads_per_rank=3)
    assert aprun(spec, CMD) == [
        "aprun", "-n", "4", "-N", "2", "-d", "3", "-cc", "depth", "-L", "3824,8",
        "-e", "OMP_NUM_THREADS=3", *CMD,
    ]


def test_aprun_no_binding_and_bad_hosts() -> None:
    assert aprun(LaunchSpec(hosts=("nid00001",), cpu_bind=None), CMD)[7:9] == ["-cc", "none"]
    with pytest.raises(ConfigError, match="'thetalogin1'"):
        aprun(LaunchSpec(hosts=("thetalogin1",)), CMD)


# --------------------------------------------------------------------------- jsrun


def test_jsrun_one_rank() -> None:
    assert jsrun(LaunchSpec(hosts=("a01n05",)), CMD) == [
        "jsrun", "-n", "1", "-a", "1", "-c", "1", "-g", "0", "-r", "1", "--bind", "packed:1",
        "-E", "OMP_NUM_THREADS=1", *CMD,
    ]


def test_jsrun_two_by_two_by_three_with_gpus() -> None:
    spec = LaunchSpec(hosts=("a01n05", "a01n06"), ranks_per_node=2, threads_per_rank=3,
                      gpus_per_rank=3)
    assert jsrun(spec, CMD) == [
        "jsrun", "-n", "4", "-a", "1", "-c", "3", "-g", "3", "-r", "2", "--bind", "packed:3",
        "-E", "OMP_NUM_THREADS=3", *CMD,
    ]
    assert jsrun(LaunchSpec(hosts=("a",), cpu_bind=None), CMD)[11:13] == ["--bind", "none"]


# --------------------------------------------------------------------------- all launchers

def env_value(argv: list[str], name: str) -> str | None:
    """The value a launcher argv gives ``name``, as ``NAME=VALUE`` or as ``NAME VALUE``.

    Fails if the variable is given more than once, so a value is never split or doubled.
    """
    found = [a.partition("=")[2] for a in argv if a.startswith(f"{name}=")]
    found += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    assert len(found) <= 1, f"{name} given {len(found)} times in {argv}"
    return found[0] if found else None


NASTY = ["a b", "$(rm -rf ~)", "x;y", "'q'", '"dq"', "*", "|&>", "", "é ✓", "line\nbreak"]


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_values_with_metacharacters_stay_one_argv_element(name: str) -> None:
    hosts = ("nid00001", "nid00002")
    env = {"GREETING": "hello world; $HOME", "LIST": "a,b,c"}
    spec = LaunchSpec(hosts=hosts, ranks_per_node=2, env=env)
    argv = build(name, spec, ["/opt/my app/bin", *NASTY])
    assert argv[-len(NASTY) - 1 :] == ["/opt/my app/bin", *NASTY]
    for var, value in env.items():
        assert env_value(argv, var) == value


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_user_env_overrides_omp_num_threads(name: str) -> None:
    spec = LaunchSpec(hosts=("nid00001",), threads_per_rank=4, env={"OMP_NUM_THREADS": "2"})
    assert env_value(build(name, spec, CMD), "OMP_NUM_THREADS") == "2"
    assert rank_env(spec) == {"OMP_NUM_THREADS": "2"}


def test_every_name_has_a_builder() -> None:
    assert set(LAUNCHERS) == {
        "mpiexec", "mpich", "cray-mpiexec", "mpirun", "openmpi", "srun", "aprun", "jsrun"
    }
    assert LAUNCHERS["mpiexec"] is mpich and LAUNCHERS["openmpi"] is openmpi


def test_unknown_launcher_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown MPI launcher 'mpiexec.hydra'") as info:
        build("mpiexec.hydra", ONE, CMD)
    for name in LAUNCHERS:
        assert name in str(info.value)


@pytest.mark.parametrize("cmd", [[], [""], "./sim --in x"])
def test_empty_or_string_command_is_refused(cmd: list[str]) -> None:
    with pytest.raises(ConfigError, match="command"):
        mpich(ONE, cmd)


# --------------------------------------------------------------------------- LaunchSpec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hosts": ()}, "at least one host"),
        ({"hosts": ("a,b",)}, "contains ','"),
        ({"hosts": ("a b",)}, "contains ','"),
        ({"hosts": ("",)}, "empty"),
        ({"hosts": ("a",), "ranks_per_node": 0}, "ranks_per_node"),
        ({"hosts": ("a",), "threads_per_rank": 0}, "threads_per_rank"),
        ({"hosts": ("a",), "gpus_per_rank": -1}, "gpus_per_rank"),
        ({"hosts": ("a",), "gpu_ids": (1, 1)}, "distinct"),
        ({"hosts": ("a",), "gpu_ids": (-1,)}, "distinct"),
        ({"hosts": ("a",), "ranks_per_node": 2, "gpus_per_rank": 1, "gpu_ids": (3,)},
         "need 2 GPUs but gpu_ids has 1"),
        ({"hosts": ("a",), "env": {"BAD-NAME": "x"}}, "not valid"),
        ({"hosts": ("a",), "env": {"A=B": "x"}}, "not valid"),
        ({"hosts": ("a",), "cpu_bind": " "}, "cpu_bind"),
    ],
)
def test_launch_spec_refuses_nonsense(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LaunchSpec(**kwargs)  # type: ignore[arg-type]


def test_launch_spec_copies_what_it_is_given() -> None:
    env = {"A": "1"}
    spec = LaunchSpec(hosts=["a", "b"], env=env)  # type: ignore[arg-type]
    env["A"] = "2"
    assert spec.hosts == ("a", "b") and spec.env == {"A": "1"}
    assert spec.nodes == 2 and spec.total_ranks == 2


# --------------------------------------------------------------------------- wrap


def test_wrap_without_launcher_returns_the_command_unchanged() -> None:
    assert wrap(None, LaunchSpec(hosts=("here",), threads_per_rank=4), CMD) == CMD


def test_wrap_without_launcher_refuses_mpi_tasks() -> None:
    with pytest.raises(ConfigError, match=r"2 rank\(s\) on each of 2 node\(s\).*srun"):
        wrap(None, TWO, CMD)
    with pytest.raises(ConfigError, match="no MPI launcher"):
        wrap(None, LaunchSpec(hosts=("a", "b")), CMD)


def test_wrap_with_launcher_always_uses_it() -> None:
    # In head mode even a one-rank task must go through the launcher to reach its node.
    assert wrap("aprun", LaunchSpec(hosts=("nid00042",)), CMD)[0] == "aprun"
    assert wrap("srun", TWO, CMD) == srun(TWO, CMD)


# --------------------------------------------------------------------------- GPUs


def test_gpu_env_per_vendor() -> None:
    assert gpu_env("nvidia", [2, 3]) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert gpu_env("amd", (0,)) == {"ROCR_VISIBLE_DEVICES": "0"}
    assert gpu_env("intel", (4, 5)) == {"ZE_AFFINITY_MASK": "4,5"}
    assert gpu_env("nvidia", ()) == {}


def test_gpu_env_refuses_unknown_vendor_and_bad_ids() -> None:
    with pytest.raises(ConfigError, match="unknown GPU vendor 'apple'"):
        gpu_env("apple", [0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="distinct"):
        gpu_env("nvidia", [1, 1])


def test_assign_gpus_prefers_a_consecutive_run() -> None:
    assert assign_gpus([0, 2, 3, 5], 2) == (2, 3)
    assert assign_gpus([5, 3, 2, 0], 2) == (2, 3)
    assert assign_gpus([0, 2, 4], 2) == (0, 2)
    assert assign_gpus([7, 1], 1) == (1,)
    assert assign_gpus([0, 1], 0) == ()


def test_assign_gpus_refuses_more_than_free() -> None:
    with pytest.raises(ConfigError, match=r"3 GPU\(s\) asked but only 2 free"):
        assign_gpus([0, 1], 3)
    with pytest.raises(ConfigError, match="negative"):
        assign_gpus([0, 1], -1)


@given(st.sets(st.integers(0, 15)), st.data())
def test_assign_gpus_takes_n_distinct_free_ids(free: set[int], data: st.DataObject) -> None:
    n = data.draw(st.integers(0, len(free)))
    got = assign_gpus(sorted(free, reverse=True), n)
    assert len(got) == n and len(set(got)) == n and set(got) <= free


# --------------------------------------------------------------------------- footprint


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # (node_cores, node_gpus, rpn, tpr, gpr, packing) -> (cores, gpus)
        ((64, 4, 1, 1, 0, 1), (64, 0)),  # packing 1: the whole node's cores
        ((64, 4, 1, 1, 0, 4), (16, 0)),  # a quarter of the node
        ((64, 4, 1, 1, 1, 4), (16, 1)),
        ((64, 4, 4, 8, 0, 4), (32, 0)),  # asks more than its share
        ((64, 4, 1, 1, 1, 2), (32, 2)),  # GPU share too, when it uses GPUs
        ((64, 4, 2, 1, 2, 8), (8, 4)),
        ((10, 0, 1, 1, 0, 3), (4, 0)),  # ceil(10/3)
        ((10, 0, 1, 1, 0, 100), (1, 0)),
        ((64, 4, 8, 8, 0, 1000), (64, 0)),  # exactly the node
        ((64, 4, 4, 1, 1, 1), (64, 4)),
    ],
)
def test_task_footprint(args: tuple[int, int, int, int, int, int],
                        expected: tuple[int, int]) -> None:
    assert task_footprint(*args) == expected


def test_task_footprint_refuses_what_never_fits() -> None:
    with pytest.raises(ConfigError, match=r"needs 65 core\(s\) and 0 GPU\(s\).*64 core\(s\)"):
        task_footprint(64, 4, 13, 5, 0, 1)
    with pytest.raises(ConfigError, match=r"needs 4 core\(s\) and 8 GPU\(s\).*4 GPU\(s\)"):
        task_footprint(64, 4, 4, 1, 2, 1)
    with pytest.raises(ConfigError, match="node_packing_count"):
        task_footprint(64, 4, 1, 1, 0, 0)
    with pytest.raises(ConfigError, match="at least 1"):
        task_footprint(64, 4, 0, 1, 0, 1)


@given(
    st.integers(1, 256), st.integers(0, 8), st.integers(1, 16), st.integers(1, 16),
    st.integers(0, 4), st.integers(1, 64),
)
def test_packing_count_bounds_tasks_per_node(
    cores: int, gpus: int, rpn: int, tpr: int, gpr: int, packing: int
) -> None:
    if rpn * tpr > cores or rpn * gpr > gpus:
        with pytest.raises(ConfigError):
            task_footprint(cores, gpus, rpn, tpr, gpr, packing)
        return
    c, g = task_footprint(cores, gpus, rpn, tpr, gpr, packing)
    assert rpn * tpr <= c <= cores and rpn * gpr <= g <= gpus
    assert cores // c <= packing  # never more than `packing` such tasks on one node
