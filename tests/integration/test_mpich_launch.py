"""The MPICH argv builder against the real MPICH ``mpiexec`` (Hydra)."""

from __future__ import annotations

import shutil
import sys

import anyio
import pytest

from tidewater.pilot.launchers import LaunchSpec, mpich

pytestmark = [pytest.mark.mpi, pytest.mark.integration]

HOW_TO_GET_MPICH = (
    "needs MPICH's mpiexec (Hydra) on PATH: "
    "`apt-get install -y --no-install-recommends mpich` (Debian/Ubuntu, as root) "
    "or `dnf install mpich` and `module load mpi/mpich-x86_64` (Fedora/RHEL)"
)


async def require_hydra() -> str:
    """Skip unless ``mpiexec`` is MPICH's Hydra (Open MPI's has other options)."""
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip(HOW_TO_GET_MPICH)
    r = await anyio.run_process([exe, "--version"], check=False)
    if b"HYDRA" not in r.stdout + r.stderr:
        pytest.skip(f"{exe} is not MPICH's Hydra; {HOW_TO_GET_MPICH}")
    return exe


async def run(argv: list[str]) -> list[str]:
    with anyio.fail_after(60):
        r = await anyio.run_process(argv, check=False)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, f"{argv} exited {r.returncode}\nstdout: {out}\nstderr: {err}"
    return sorted(line for line in out.splitlines() if line.strip())


async def test_two_ranks_on_localhost() -> None:
    await require_hydra()
    spec = LaunchSpec(hosts=("localhost",), ranks_per_node=2)
    cmd = [sys.executable, "-c", "import os; print(os.environ['PMI_RANK'], os.environ['PMI_SIZE'])"]
    assert await run(mpich(spec, cmd)) == ["0 2", "1 2"]


async def test_environment_and_arguments_arrive_verbatim() -> None:
    await require_hydra()
    greeting = "hello world; $HOME `id` 'q' \"dq\" a,b"
    spec = LaunchSpec(hosts=("localhost",), ranks_per_node=2, threads_per_rank=1,
                      cpu_bind=None, env={"GREETING": greeting})
    code = (
        "import os, sys; "
        "print(os.environ['PMI_RANK'], os.environ['OMP_NUM_THREADS'], "
        "repr(os.environ['GREETING']), repr(sys.argv[1:]))"
    )
    args = ["a b", "$(echo no)", "*", ""]
    lines = await run(mpich(spec, [sys.executable, "-c", code, *args]))
    assert lines == [f"{rank} 1 {greeting!r} {args!r}" for rank in (0, 1)]
