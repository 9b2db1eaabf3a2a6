"""The local Slurm cluster runs a batch job: fails early and plainly when Slurm is broken.

Every Slurm adapter test builds on this; if it fails, look at
/var/tmp/tidewater-services/log/ (slurmctld.log, slurmd.log) first.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import anyio
import pytest

from .conftest import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

DEADLINE = 30.0  # submit -> running is about a second on an idle node


async def _out(*cmd: str) -> str:
    r = await anyio.run_process(list(cmd), check=False)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}: {r.stderr.decode().strip()}")
    return r.stdout.decode().strip()


async def _job_state(job_id: str) -> str:
    """The job's state from scontrol (finished jobs stay visible: MinJobAge=300)."""
    text = await _out("scontrol", "show", "job", "-o", job_id)
    fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
    return fields.get("JobState", "?")


async def test_sbatch_job_runs_and_writes_its_file(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = anyio.Path(tmp_path / "hello.txt")
    job_id = await _out(
        "sbatch", "--parsable", "--partition", slurm.partition, "--nodes", "1",
        "--ntasks", "1", "--time", "1", "--job-name", "tidewater-slurm-check",
        "--chdir", str(tmp_path), "--output", str(tmp_path / "slurm-%j.out"),
        "--wrap", f"echo hello-$SLURM_JOB_ID > {shlex.quote(str(out))}",
    )
    job_id = job_id.split(";")[0]  # "<id>;<cluster>" on multi-cluster setups
    assert job_id.isdigit(), f"sbatch --parsable printed {job_id!r}"

    state = "?"
    try:
        with anyio.fail_after(DEADLINE):
            while not (await out.exists() and (await out.read_text()).endswith("\n")):
                state = await _job_state(job_id)
                if state in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL",
                             "OUT_OF_MEMORY", "DEADLINE", "PREEMPTED"}:
                    pytest.fail(f"Slurm job {job_id} ended {state} without writing {out}")
                await anyio.sleep(0.05)
            while (state := await _job_state(job_id)) != "COMPLETED":
                assert state in {"RUNNING", "COMPLETING", "PENDING", "CONFIGURING"}, state
                await anyio.sleep(0.05)
    except TimeoutError:
        detail = await _out("scontrol", "show", "job", job_id)
        pytest.fail(
            f"Slurm job {job_id} did not finish within {DEADLINE:.0f}s (last state {state}); "
            f"is the node up? see /var/tmp/tidewater-services/log/\n{detail}"
        )

    assert await out.read_text() == f"hello-{job_id}\n"
