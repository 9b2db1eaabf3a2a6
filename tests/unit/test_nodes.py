"""Allocation discovery from recorded batch-job environments, and the wall-time policy."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewater.errors import ConfigError
from tidewater.pilot.nodes import (
    Allocation,
    Node,
    admits,
    discover,
    expand_hostlist,
    must_stop,
    parse_cobalt_partname,
    parse_slurm_cpus_per_node,
    seconds_left,
)

NOW = 1_717_000_000.0  # a fixed "now"; time is an input


def files(contents: Mapping[str, str]) -> Callable[[str], str]:
    """A read_file that serves recorded host files and fails like open() for others."""

    def read(path: str) -> str:
        try:
            return contents[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None

    return read


def no_files(path: str) -> str:
    raise AssertionError(f"discover read {path!r} although the environment says everything")


def run(
    env: Mapping[str, str],
    read_file: Callable[[str], str] = no_files,
    *,
    hostname: str = "here",
    local_cores: int = 8,
    local_gpus: int = 0,
    now: float = NOW,
) -> Allocation:
    return discover(env, read_file=read_file, hostname=hostname, local_cores=local_cores,
                    local_gpus=local_gpus, now=now)


# --------------------------------------------------------------------------- Slurm

# Recorded from a 3-node Perlmutter GPU job (sbatch -C gpu -N 3 --gpus-per-node 4),
# trimmed to the variables that matter plus a few that must be ignored.
PERLMUTTER = {
    "SLURM_CLUSTER_NAME": "perlmutter",
    "SLURM_JOB_ID": "27149213",
    "SLURM_JOBID": "27149213",
    "SLURM_JOB_NAME": "tw-perlmutter-41",
    "SLURM_JOB_NUM_NODES": "3",
    "SLURM_JOB_NODELIST": "nid[001236-001237,001240]",
    "SLURM_NODELIST": "nid[001236-001237,001240]",
    "SLURM_JOB_CPUS_PER_NODE": "128(x3)",
    "SLURM_CPUS_ON_NODE": "128",
    "SLURM_GPUS_ON_NODE": "4",
    "SLURM_JOB_GPUS": "0,1,2,3",
    "SLURM_JOB_PARTITION": "gpu_ss11",
    "SLURM_JOB_START_TIME": str(int(NOW) - 120),
    "SLURM_JOB_END_TIME": str(int(NOW) + 3480),
    "SLURMD_NODENAME": "nid001236",
    "CUDA_VISIBLE_DEVICES": "0",  # a process fact, not a node fact
}


def test_perlmutter_slurm_job() -> None:
    alloc = run(PERLMUTTER, hostname="nid001236", local_cores=256, local_gpus=1)
    assert alloc == Allocation(
        scheduler="slurm",
        job_id="27149213",
        nodes=(
            Node("nid001236", 128, 4),
            Node("nid001237", 128, 4),
            Node("nid001240", 128, 4),
        ),
        end_time=NOW + 3480,
    )
    assert alloc.hosts == ("nid001236", "nid001237", "nid001240")


def test_slurm_heterogeneous_cpus_and_job_gpus() -> None:
    env = {
        "SLURM_JOB_ID": "99",
        "SLURM_NODELIST": "cn[01-03]",
        "SLURM_JOB_CPUS_PER_NODE": "36(x2),72",
        "SLURM_JOB_GPUS": "0,1",
    }
    alloc = run(env, local_gpus=8)
    assert [(n.host, n.cores, n.gpus) for n in alloc.nodes] == [
        ("cn01", 36, 2), ("cn02", 36, 2), ("cn03", 72, 2)
    ]
    assert alloc.end_time is None


def test_slurm_without_counts_uses_local_shape() -> None:
    alloc = run({"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n1,n2"}, local_cores=12,
                local_gpus=2)
    assert alloc.nodes == (Node("n1", 12, 2), Node("n2", 12, 2))


def test_slurm_cpu_count_disagreeing_with_nodelist_is_an_error() -> None:
    env = {**PERLMUTTER, "SLURM_JOB_CPUS_PER_NODE": "128(x2)"}
    with pytest.raises(ConfigError, match=r"gives 2 node\(s\) but.*names 3"):
        run(env)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("72", [72]),
        ("36(x2),72", [36, 36, 72]),
        ("64(x3)", [64, 64, 64]),
        ("1,2(x2),3", [1, 2, 2, 3]),
    ],
)
def test_parse_slurm_cpus_per_node(value: str, expected: list[int]) -> None:
    assert parse_slurm_cpus_per_node(value) == expected


@pytest.mark.parametrize("value", ["", "36(2)", "x", "36(x0)", "36,,72", "-1", "36(x2"])
def test_parse_slurm_cpus_per_node_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="SLURM_JOB_CPUS_PER_NODE"):
        parse_slurm_cpus_per_node(value)


# --------------------------------------------------------------------------- PBS

POLARIS_NODEFILE = "/var/spool/pbs/aux/2041563.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
# Polaris: select=2:system=polaris, one line per node in PBS_NODEFILE.
POLARIS = {
    "PBS_JOBID": "2041563.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
    "PBS_JOBNAME": "tw-polaris-7",
    "PBS_NODEFILE": POLARIS_NODEFILE,
    "PBS_O_HOST": "polaris-login-02.hsn.cm.polaris.alcf.anl.gov",
    "PBS_QUEUE": "debug",
    "NCPUS": "64",
    "OMP_NUM_THREADS": "64",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
}
POLARIS_HOSTS = (
    "x3006c0s13b0n0.hsn.cm.polaris.alcf.anl.gov\n"
    "x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov\n"
)


def test_polaris_pbs_job() -> None:
    alloc = run(POLARIS, files({POLARIS_NODEFILE: POLARIS_HOSTS}),
                hostname="x3006c0s13b0n0", local_cores=64, local_gpus=4)
    assert alloc == Allocation(
        scheduler="pbs",
        job_id="2041563.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
        nodes=(
            Node("x3006c0s13b0n0.hsn.cm.polaris.alcf.anl.gov", 64, 4),
            Node("x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov", 64, 4),
        ),
        end_time=None,
    )


def test_pbs_slot_lines_count_as_cores_without_ncpus() -> None:
    # select=2:ncpus=4:mpiprocs=4 on a cluster without NCPUS exported: 4 lines per host.
    content = "cn7\n" * 4 + "cn8\n" * 4
    env = {"PBS_JOBID": "88.pbs", "PBS_NODEFILE": "/tmp/nf"}
    alloc = run(env, files({"/tmp/nf": content}), local_cores=48)
    assert alloc.nodes == (Node("cn7", 4, 0), Node("cn8", 4, 0))


def test_pbs_one_line_per_host_without_ncpus_uses_local_cores() -> None:
    env = {"PBS_JOBID": "88.pbs", "PBS_NODEFILE": "/tmp/nf"}
    alloc = run(env, files({"/tmp/nf": "cn7\ncn8\n"}), local_cores=48)
    assert [n.cores for n in alloc.nodes] == [48, 48]


def test_pbs_nodefile_that_cannot_be_read_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot read PBS_NODEFILE=.*2041563"):
        run(POLARIS, files({}))


def test_pbs_end_time_comes_from_our_batch_script() -> None:
    env = {**POLARIS, "TIDEWATER_JOB_END": str(NOW + 1800)}
    alloc = run(env, files({POLARIS_NODEFILE: POLARIS_HOSTS}))
    assert alloc.end_time == NOW + 1800


# --------------------------------------------------------------------------- LSF

# Summit: bsub -nnodes 2. The batch (launch) node comes first with one slot.
SUMMIT = {
    "LSB_JOBID": "3071123",
    "LSB_JOBNAME": "tw-summit-3",
    "LSB_MCPU_HOSTS": "batch3 1 a01n05 42 a01n06 42",
    "LSB_DJOB_HOSTFILE": "/ccs/home/ada/.lsbatch/1712345678.3071123.hostfile",
    "LSB_HOSTS": "batch3 " + "a01n05 " * 42 + "a01n06 " * 42,
    "LS_SUBCWD": "/gpfs/alpine/proj/ada",
}


def test_summit_lsf_job_drops_the_batch_node() -> None:
    alloc = run(SUMMIT, hostname="batch3", local_cores=16, local_gpus=6)
    assert alloc == Allocation(
        scheduler="lsf",
        job_id="3071123",
        nodes=(Node("a01n05", 42, 6), Node("a01n06", 42, 6)),
        end_time=None,
    )


def test_lsf_hostfile_when_mcpu_hosts_is_missing() -> None:
    path = SUMMIT["LSB_DJOB_HOSTFILE"]
    content = "batch3\n" + "a01n05\n" * 42 + "a01n06\n" * 42
    env = {k: v for k, v in SUMMIT.items() if k != "LSB_MCPU_HOSTS"}
    alloc = run(env, files({path: content}))
    assert alloc.nodes == (Node("a01n05", 42, 0), Node("a01n06", 42, 0))


def test_lsf_keeps_hosts_named_login_when_nothing_else_is_left() -> None:
    alloc = run({"LSB_JOBID": "1", "LSB_MCPU_HOSTS": "login2 4"})
    assert alloc.nodes == (Node("login2", 4, 0),)


@pytest.mark.parametrize("value", ["batch3 1 a01n05", "a01n05 many", "a01n05 0"])
def test_lsf_malformed_mcpu_hosts(value: str) -> None:
    with pytest.raises(ConfigError, match="LSB_MCPU_HOSTS"):
        run({"LSB_JOBID": "1", "LSB_MCPU_HOSTS": value})


# --------------------------------------------------------------------------- Cobalt

# Theta: qsub -n 5 -t 60, script on a MOM node; KNL compute nodes have 64 cores.
THETA_END = NOW + 3540
THETA = {
    "COBALT_JOBID": "456789",
    "COBALT_PARTNAME": "3824-3827,3830",
    "COBALT_PARTSIZE": "5",
    "COBALT_JOBSIZE": "5",
    "COBALT_ENDTIME": str(int(THETA_END)),
    "COBALT_STARTTIME": str(int(NOW) - 60),
    "COBALT_QUEUE": "debug-cache-quad",
}


def test_theta_cobalt_job() -> None:
    alloc = run(THETA, hostname="thetamom1", local_cores=64)
    assert alloc == Allocation(
        scheduler="cobalt",
        job_id="456789",
        nodes=tuple(Node(f"nid0{n}", 64, 0) for n in (3824, 3825, 3826, 3827, 3830)),
        end_time=THETA_END,
    )


def test_cobalt_partname_padding_and_hostnames() -> None:
    assert parse_cobalt_partname("8-9,10") == ["nid00008", "nid00009", "nid00010"]
    assert parse_cobalt_partname("thetagpu[06-07]") == ["thetagpu06", "thetagpu07"]


def test_cobalt_jobsize_disagreeing_with_partname() -> None:
    with pytest.raises(ConfigError, match=r"names 5 node\(s\) but COBALT_JOBSIZE='4'"):
        run({**THETA, "COBALT_JOBSIZE": "4"})


@pytest.mark.parametrize("value", ["3827-3824", "12--14", "1,,2", "-3"])
def test_cobalt_malformed_partname(value: str) -> None:
    with pytest.raises(ConfigError, match="COBALT_PARTNAME"):
        parse_cobalt_partname(value)


# --------------------------------------------------------------------------- local


def test_no_scheduler_is_one_local_node() -> None:
    alloc = run({"HOME": "/home/ada", "CUDA_VISIBLE_DEVICES": "1"}, hostname="laptop",
                local_cores=10, local_gpus=1)
    assert alloc == Allocation("local", "", (Node("laptop", 10, 1),), None)


def test_local_scheduler_simulates_nodes() -> None:
    env = {"TIDEWATER_LOCAL_JOBID": "17", "TIDEWATER_LOCAL_NODES": "3",
           "TIDEWATER_JOB_END": str(NOW + 60)}
    alloc = run(env, hostname="ci-runner", local_cores=2)
    assert alloc.scheduler == "local"
    assert alloc.job_id == "17"
    assert alloc.nodes == (Node("ci-runner", 2, 0),) * 3
    assert alloc.end_time == NOW + 60


@pytest.mark.parametrize("value", ["0", "three", "-1"])
def test_local_nodes_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(ConfigError, match="TIDEWATER_LOCAL_NODES"):
        run({"TIDEWATER_LOCAL_JOBID": "1", "TIDEWATER_LOCAL_NODES": value})


# --------------------------------------------------------------------------- all schedulers


def test_slurm_wins_over_other_schedulers_variables() -> None:
    # A Slurm job submitted from a shell that had PBS variables exported.
    env = {**POLARIS, **PERLMUTTER}
    assert run(env).scheduler == "slurm"


def test_our_end_time_overrides_the_schedulers() -> None:
    env = {**PERLMUTTER, "TIDEWATER_JOB_END": str(NOW + 600)}
    assert run(env).end_time == NOW + 600


def test_zero_end_time_means_no_limit() -> None:
    assert run({**PERLMUTTER, "SLURM_JOB_END_TIME": "0"}).end_time is None


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("soon", "not a time"),
        ("nan", "not a time"),
        ("-5", "not a time"),
        (str(int(NOW * 1000)), "milliseconds"),
    ],
)
def test_bad_end_times_are_refused(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run({"TIDEWATER_JOB_END": value})
    with pytest.raises(ConfigError, match=match):
        run({**THETA, "COBALT_ENDTIME": value})


def test_bad_gpu_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="SLURM_GPUS_ON_NODE"):
        run({**PERLMUTTER, "SLURM_GPUS_ON_NODE": "four"})
    env = {k: v for k, v in PERLMUTTER.items() if k != "SLURM_GPUS_ON_NODE"}
    with pytest.raises(ConfigError, match="SLURM_JOB_GPUS"):
        run({**env, "SLURM_JOB_GPUS": "gpu0"})


def test_local_shape_is_checked() -> None:
    with pytest.raises(ConfigError, match="local_cores"):
        run({}, local_cores=0)


# --------------------------------------------------------------------------- hostlists


@pytest.mark.parametrize(
    ("hostlist", "expected"),
    [
        ("", []),
        ("login1", ["login1"]),
        ("nid[001-003,007],login1", ["nid001", "nid002", "nid003", "nid007", "login1"]),
        ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
        ("a[01-02]b[1-2]", ["a01b1", "a01b2", "a02b1", "a02b2"]),
        ("nid[008-011]", ["nid008", "nid009", "nid010", "nid011"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("n[98-100]", ["n98", "n99", "n100"]),
        ("[1-2]x", ["1x", "2x"]),
        ("nid[007]", ["nid007"]),
        ("a,b[1-2],c", ["a", "b1", "b2", "c"]),
        ("  cn[1-2]\n", ["cn1", "cn2"]),
    ],
)
def test_expand_hostlist(hostlist: str, expected: list[str]) -> None:
    assert expand_hostlist(hostlist) == expected


@pytest.mark.parametrize(
    ("hostlist", "match"),
    [
        ("nid[001-003", "never closed"),
        ("nid001]", "without a '\\['"),
        ("a[1[2]]", "nested"),
        ("a[]", "empty brackets"),
        ("a[3-1]", "backwards"),
        ("a[1-x]", "not a number"),
        ("a[1,,2]", "not a number"),
        ("a[-1]", "not a number"),
        ("a[1-]", "not a number"),
        ("a,,b", "empty host name"),
        ("a,", "empty host name"),
        (",a", "empty host name"),
        ("a b", "whitespace"),
        ("n[0-99999999]", "more than"),
        ("a[0-999]b[0-999]c[0-9]", "more than"),
    ],
)
def test_malformed_hostlists_say_what_is_wrong(hostlist: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        expand_hostlist(hostlist)
    assert repr(hostlist) in str(info.value)


_NAME = st.text(alphabet=string.ascii_lowercase + "-_.", min_size=1, max_size=6)
_AFFIX = st.text(alphabet=string.ascii_lowercase + string.digits + "-_.", max_size=4)


@st.composite
def host_group(draw: st.DrawFn) -> tuple[str, list[str]]:
    """One compressed item and the hosts it stands for."""
    prefix = draw(_NAME)
    suffix = draw(_AFFIX)
    if draw(st.booleans()):
        plain = prefix + suffix
        return plain, [plain]
    width = draw(st.integers(min_value=1, max_value=5))
    numbers = sorted(draw(st.sets(st.integers(0, 3000), min_size=1, max_size=25)))
    items: list[str] = []
    run_start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        lo, hi = f"{run_start:0{width}d}", f"{prev:0{width}d}"
        items.append(lo if run_start == prev else f"{lo}-{hi}")
        if n is not None:
            run_start = prev = n
    hosts = [f"{prefix}{n:0{width}d}{suffix}" for n in numbers]
    return f"{prefix}[{','.join(items)}]{suffix}", hosts


@settings(max_examples=300)
@given(st.lists(host_group(), min_size=1, max_size=6))
def test_compressed_hostlists_expand_back(groups: list[tuple[str, list[str]]]) -> None:
    compressed = ",".join(c for c, _ in groups)
    expected = [h for _, hosts in groups for h in hosts]
    assert expand_hostlist(compressed) == expected


@given(
    st.lists(st.integers(0, 99), min_size=1, max_size=5, unique=True),
    st.lists(st.integers(0, 99), min_size=1, max_size=5, unique=True),
)
def test_two_bracket_groups_are_a_cartesian_product(xs: list[int], ys: list[int]) -> None:
    compressed = f"r[{','.join(f'{x:02d}' for x in xs)}]n[{','.join(map(str, ys))}]"
    assert expand_hostlist(compressed) == [f"r{x:02d}n{y}" for x in xs for y in ys]


# --------------------------------------------------------------------------- wall time

END = 10_000.0


def test_no_end_time_admits_everything_and_never_stops() -> None:
    assert admits(NOW, None, None, 60)
    assert admits(NOW, None, 1e9, 60)
    assert not must_stop(NOW, None, 60)
    assert seconds_left(NOW, None) is None


def test_admits_without_estimate_until_the_margin() -> None:
    assert admits(END - 60.001, END, None, 60)
    assert not admits(END - 60, END, None, 60)
    assert not admits(END + 5, END, None, 60)


def test_admits_with_estimate_only_if_it_finishes_in_time() -> None:
    # window closes at 9940
    assert admits(9900, END, 40, 60)
    assert not admits(9900, END, 40.001, 60)
    assert admits(0, END, 9940, 60)
    assert not admits(9940, END, 0, 60)  # the window is closed, even for a zero estimate


def test_must_stop_from_grace_before_the_end() -> None:
    assert not must_stop(END - 30.001, END, 30)
    assert must_stop(END - 30, END, 30)
    assert must_stop(END + 100, END, 30)
    assert must_stop(END, END, 0)


def test_seconds_left() -> None:
    assert seconds_left(9_900, END) == 100
    assert seconds_left(END + 5, END) == 0


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_wall_time_policy_refuses_negative_inputs(bad: float) -> None:
    with pytest.raises(ConfigError, match="margin"):
        admits(0, END, None, bad)
    with pytest.raises(ConfigError, match="wall_time"):
        admits(0, END, bad, 0)
    with pytest.raises(ConfigError, match="grace"):
        must_stop(0, END, bad)


_T = st.floats(0, 20_000, allow_nan=False)


@given(_T, _T, st.floats(0, 5_000), st.floats(0, 600))
def test_an_admitted_estimate_is_admitted_without_it(
    now: float, end: float, wall: float, margin: float
) -> None:
    if admits(now, end, wall, margin):
        assert admits(now, end, None, margin)
        assert now + wall <= end - margin


@given(_T, _T, _T, st.floats(0, 600))
def test_once_stopping_always_stopping(now: float, later: float, end: float, grace: float) -> None:
    lo, hi = sorted((now, later))
    if must_stop(lo, end, grace):
        assert must_stop(hi, end, grace)
