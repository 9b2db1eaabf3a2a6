"""Fixtures for tests that need a real service: a one-node Slurm cluster, MPICH, sshd and
PostgreSQL; and ``store``, which runs a test's controllers on each store backend.

`scripts/services.sh start` (run by scripts/test.sh, as root) installs and starts
them. Where they are missing the tests skip with a reason saying how to get them;
under TIDEWATER_REQUIRE_SERVICES=1 (CI) tests/conftest.py turns that skip into a
failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import pg, procs
from .sshd import HOW_TO as HOW_TO_SSHD
from .sshd import SSHD, Sshd, start_sshd

HOW_TO_SLURM = "run `sudo scripts/services.sh start` (or scripts/test.sh as root) to set it up"
# States in which the node can take work now (a previous test may still hold it).
READY_STATES = {"idle", "mixed", "allocated", "completing"}


@dataclass(frozen=True)
class SlurmCluster:
    """The local test cluster: where to submit and how big it is."""

    partition: str
    node: str
    cpus: int


@dataclass(frozen=True)
class Mpich:
    """MPICH's launcher on PATH."""

    mpiexec: str
    version: str


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)


def _slurm_answer(*cmd: str) -> str:
    """stdout of a Slurm client command; skips when the controller does not answer."""
    try:
        r = _run(*cmd)
    except subprocess.TimeoutExpired:
        pytest.skip(f"Slurm does not answer ({cmd[0]} timed out): {HOW_TO_SLURM}")
    if r.returncode != 0:
        pytest.skip(f"Slurm is not running ({cmd[0]}: {r.stderr.strip()}): {HOW_TO_SLURM}")
    return r.stdout


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    """A running one-node Slurm cluster whose node is up; skips (with a how-to) when there is none."""
    for tool in ("sinfo", "squeue", "sbatch", "scontrol"):
        if shutil.which(tool) is None:
            pytest.skip(f"Slurm is not installed ({tool} not on PATH): {HOW_TO_SLURM}")
    # One at a time: with no controller each command retries for about 10 s.
    info = _slurm_answer("sinfo", "-h", "-N", "-o", "%P|%N|%c|%T")
    _slurm_answer("squeue", "-h")
    rows = [line.split("|") for line in info.splitlines() if line.count("|") == 3]
    default = [r for r in rows if r[0].endswith("*")] or rows
    for partition, node, cpus, state in default:
        if state.rstrip("*~#!%$@^-+") in READY_STATES and not state.endswith("*"):
            return SlurmCluster(partition=partition.rstrip("*"), node=node, cpus=int(cpus))
    pytest.skip(f"no Slurm node is up (sinfo: {info.strip() or 'no nodes'}): {HOW_TO_SLURM}")


@pytest.fixture(scope="session")
def mpich() -> Mpich:
    """MPICH's mpiexec (Hydra); skips (with a how-to) when mpiexec is missing or another MPI."""
    how = "install MPICH with `sudo scripts/services.sh install` (apt-get install mpich)"
    path = shutil.which("mpiexec")
    if path is None:
        pytest.skip(f"mpiexec is not on PATH: {how}")
    try:
        out = _run(path, "--version")
    except subprocess.TimeoutExpired:
        pytest.skip(f"`mpiexec --version` hung: {how}")
    text = out.stdout + out.stderr
    if "HYDRA" not in text.upper() and "MPICH" not in text.upper():
        first = text.strip().splitlines()[0] if text.strip() else "no output"
        pytest.skip(
            f"mpiexec is not MPICH ({first}): {how}; "
            "if OpenMPI owns the mpiexec alternative: update-alternatives --config mpi"
        )
    version = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.strip().startswith("Version:")),
        "unknown",
    )
    return Mpich(mpiexec=path, version=version)


# --------------------------------------------------------------------------- sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH server on a free loopback port, key auth only, its host key in its
    own known_hosts (tests/integration/sshd.py); skips (with a how-to) without sshd."""
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} not found: {HOW_TO_SSHD}")
    with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


# --------------------------------------------------------------------------- postgres


@pytest.fixture(scope="session")
def postgres_cluster() -> str:
    """The admin URL of the private PostgreSQL cluster; skips (with a how-to) when it is down."""
    why = pg.ping()
    if why is not None:
        pytest.skip(f"PostgreSQL is not running on 127.0.0.1:{pg.PORT} ({why}): {pg.HOW_TO}")
    return pg.ADMIN_URL


@pytest.fixture
def postgres_url(postgres_cluster: str) -> Iterator[str]:
    """A fresh, empty database of its own for this test (dropped after it)."""
    with pg.fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test's controllers (procs.Cluster) on each backend: "sqlite" (a file in the
    test's directory) and "postgres" (a fresh database). Use it with
    ``pytestmark = pytest.mark.usefixtures("store")``."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    url = request.getfixturevalue("postgres_url")
    procs.STORE_URL = url
    try:
        yield url
    finally:
        procs.STORE_URL = None


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def module_store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """As ``store``, for a module whose controller serves every test of the module: pass
    it to ``procs.cluster(tmp, db=module_store)`` in the module-scoped fixture that starts
    that controller (None: a SQLite file; else a fresh PostgreSQL database). Other
    clusters of the module keep their own stores."""
    if request.param == "sqlite":
        yield None
        return
    why = pg.ping()
    if why is not None:
        pytest.skip(f"PostgreSQL is not running on 127.0.0.1:{pg.PORT} ({why}): {pg.HOW_TO}")
    with pg.fresh_database() as url:
        yield url
