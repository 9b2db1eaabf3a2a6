"""The MPICH argv builder against the real MPICH ``mpiexec`` (Hydra)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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


async def run(argv: list[str]) -> None:
    with anyio.fail_after(60):
        r = await anyio.run_process(argv, check=False)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, f"{argv} exited {r.returncode}\nstdout: {out}\nstderr: {err}"


def per_rank(out: Path) -> list[str]:
    """What each rank wrote to its own file, in rank order.

    Ranks write files rather than stdout: Hydra forwards the ranks' stdout
    streams concurrently, so their lines can interleave mid-line.
    """
    return [p.read_text() for p in sorted(out.iterdir())]


WRITE = "open(os.path.join(sys.argv[1], 'rank' + os.environ['PMI_RANK']), 'w').write"


async def test_two_ranks_on_localhost(tmp_path: Path) -> None:
    await require_hydra()
    spec = LaunchSpec(hosts=("localhost",), ranks_per_node=2)
    code = f"import os, sys; {WRITE}(os.environ['PMI_RANK'] + ' ' + os.environ['PMI_SIZE'])"
    await run(mpich(spec, [sys.executable, "-c", code, str(tmp_path)]))
    assert per_rank(tmp_path) == ["0 2", "1 2"]


async def test_environment_and_arguments_arrive_verbatim(tmp_path: Path) -> None:
    await require_hydra()
    greeting = "hello world; $HOME `id` 'q' \"dq\" a,b"
    spec = LaunchSpec(hosts=("localhost",), ranks_per_node=2, threads_per_rank=1,
                      cpu_bind=None, env={"GREETING": greeting})
    code = (
        f"import os, sys; {WRITE}(' '.join(["
        "os.environ['PMI_RANK'], os.environ['OMP_NUM_THREADS'], "
        "repr(os.environ['GREETING']), repr(sys.argv[2:])]))"
    )
    args = ["a b", "$(echo no)", "*", ""]
    await run(mpich(spec, [sys.executable, "-c", code, str(tmp_path), *args]))
    assert per_rank(tmp_path) == [f"{rank} 1 {greeting!r} {args!r}" for rank in (0, 1)]
