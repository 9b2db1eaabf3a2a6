"""Scheduler adapters end to end: SchedulerClient + run_command against the local fork
scheduler and fake qsub/bsub/... executables that really run the jobs.

Waiting is polling ``status()`` under a deadline; wall time is scaled down
(a "minute" lasts ``MINUTE`` seconds) where a test needs a wall-time kill.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from tidewater.agents.schedulers import (
    JobRequest,
    JobStatus,
    LocalScheduler,
    SchedulerClient,
    get_scheduler,
    localexec,
)
from tidewater.errors import SchedulerCommandError

pytestmark = pytest.mark.integration

FAKES = Path(__file__).resolve().parent.parent / "fakes"
KINDS = ["local", "pbs", "lsf", "cobalt"]
MINUTE = 0.5  # seconds a wall-time minute lasts in the timeout tests
DEADLINE = 30.0
# Where each kind puts the job's stdout, and the environment it gives the job.
STDOUT = {"local": "{id}.out", "pbs": "job.out", "lsf": "{id}.out", "cobalt": "job.output"}
ENV_SEEN = {
    "local": {"TIDEWATER_LOCAL_JOBID", "TIDEWATER_LOCAL_NODES"},
    "pbs": {"PBS_JOBID", "PBS_NODEFILE", "PBS_O_WORKDIR"},
    "lsf": {"LSB_JOBID", "LSB_MCPU_HOSTS", "LSB_DJOB_HOSTFILE"},
    "cobalt": {"COBALT_JOBID", "COBALT_PARTNAME", "COBALT_JOBSIZE"},
}

JOBID_VAR = {"local": "TIDEWATER_LOCAL_JOBID", "pbs": "PBS_JOBID", "lsf": "LSB_JOBID",
             "cobalt": "COBALT_JOBID"}


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    """Where every job of the test lives; whatever still runs at the end is cancelled."""
    root = tmp_path / "sched-state"
    yield root
    for d in [root / "local", *(root / k for k in ("pbs", "lsf", "cobalt"))]:
        for job in localexec.list_jobs(d):
            if job.state in ("PENDING", "RUNNING"):
                localexec.cancel_job(d, str(job.job_id))


def make_client(kind: str, root: Path, *, minute: float = 60.0, **env: str) -> SchedulerClient:
    if kind == "local":
        adapter = LocalScheduler(state_dir=root / "local", minute_seconds=minute, kill_grace=1)
        return SchedulerClient(adapter, timeout=20)
    path = f"{FAKES / kind}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return SchedulerClient(get_scheduler(kind), timeout=20, env={
        "PATH": path, "TIDEWATER_FAKE_SCHED_DIR": str(root),
        "TIDEWATER_FAKE_SCHED_MINUTE": f"{minute:g}", "TIDEWATER_FAKE_SCHED_GRACE": "1", **env,
    })


async def wait_for(
    client: SchedulerClient, job_id: str, done: Callable[[JobStatus | None], bool],
) -> JobStatus | None:
    """Poll status until ``done(job)`` (job None: no longer listed) or the deadline."""
    with anyio.fail_after(DEADLINE):
        while True:
            job = next((j for j in await client.status() if j.scheduler_id == job_id), None)
            if done(job):
                return job
            await anyio.sleep(0.1)


def finished(job: JobStatus | None) -> bool:
    # Cobalt drops finished jobs from qstat; the agent counts a vanished job as finished.
    return job is None or job.state == "finished"


async def read_when_written(path: Path) -> str:
    """The file's first complete line, once the job has written it."""
    apath = anyio.Path(path)
    with anyio.fail_after(DEADLINE):
        while True:
            text = await apath.read_text() if await apath.exists() else ""
            if text.endswith("\n"):
                return text.strip()
            await anyio.sleep(0.05)


def running(job: JobStatus | None) -> bool:
    return job is not None and job.state == "running"


def request(wd: Path, body: str, *, minutes: int = 10, nodes: int = 2) -> JobRequest:
    return JobRequest(job_name=f"tw-test-{wd.name}", nodes=nodes, wall_time_min=minutes,
                      workdir=str(wd), script_body=body, queue="debug", project="proj")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("kind", KINDS)
async def test_submitted_script_runs_with_the_schedulers_environment(
    kind: str, state_root: Path, tmp_path: Path
) -> None:
    client = make_client(kind, state_root)
    wd = tmp_path / "job1"
    q = shlex.quote
    body = f"echo hello from the job\nenv > {q(str(wd / 'env.txt'))}\necho done > {q(str(wd / 'result'))}\n"
    job_id = await client.submit(request(wd, body))

    job = await wait_for(client, job_id, finished)

    assert (wd / "result").read_text() == "done\n"
    env = dict(line.split("=", 1) for line in (wd / "env.txt").read_text().splitlines() if "=" in line)
    assert ENV_SEEN[kind] <= env.keys()
    assert env[JOBID_VAR[kind]] == job_id
    local_id = env["TIDEWATER_LOCAL_JOBID"]
    assert "hello from the job" in (wd / STDOUT[kind].format(id=local_id)).read_text()
    if kind == "pbs":
        nodefile = await anyio.Path(env["PBS_NODEFILE"]).read_text()
        assert nodefile.count("\n") == 2  # one line per node
    if job is not None:
        assert (job.name, job.nodes, job.reason) == ("tw-test-job1", 2, "COMPLETED")
        assert job.start_time is not None and job.end_time is not None


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_stops_a_long_job(kind: str, state_root: Path, tmp_path: Path) -> None:
    client = make_client(kind, state_root)
    wd = tmp_path / "long"
    pid_file = wd / "pid"
    job_id = await client.submit(request(wd, f"echo $$ > {shlex.quote(str(pid_file))}\nsleep 300\n"))
    await wait_for(client, job_id, running)
    pid = int(await read_when_written(pid_file))

    await client.cancel(job_id)
    job = await wait_for(client, job_id, finished)

    assert gone(pid)
    if job is not None:
        assert job.reason.startswith("CANCELLED")


@pytest.mark.parametrize("kind", ["local", "pbs", "lsf"])
async def test_wall_time_kill_is_timeout(kind: str, state_root: Path, tmp_path: Path) -> None:
    client = make_client(kind, state_root, minute=MINUTE)
    job_id = await client.submit(request(tmp_path / "slow", "sleep 300\n", minutes=1))
    job = await wait_for(client, job_id, finished)
    assert job is not None
    assert (job.state, job.reason) == ("finished", "TIMEOUT")


@pytest.mark.parametrize("kind", ["pbs", "lsf", "cobalt"])
async def test_a_rejected_submit_says_what_was_run_and_why(
    kind: str, state_root: Path, tmp_path: Path
) -> None:
    client = make_client(kind, state_root, TIDEWATER_FAKE_SCHED_REJECT="1")
    with pytest.raises(SchedulerCommandError) as info:
        await client.submit(request(tmp_path / "no", "true\n"))
    err = info.value
    assert err.returncode == 1
    assert str(tmp_path / "no" / "job.sh") in err.argv
    expected = {"pbs": "Job violates queue", "lsf": "Job not submitted",
                "cobalt": "Failed to submit job"}[kind]
    assert expected in err.stderr and expected in str(err)
    assert await client.status() == []


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_of_an_unknown_job_is_an_error(kind: str, state_root: Path) -> None:
    client = make_client(kind, state_root)
    with pytest.raises(SchedulerCommandError) as info:
        await client.cancel("4711")
    assert info.value.returncode not in (0, None)
    assert "4711" in info.value.stderr


async def test_local_concurrent_submits_get_distinct_ids(state_root: Path, tmp_path: Path) -> None:
    client = make_client("local", state_root)
    ids: list[str] = []

    async def one(i: int) -> None:
        ids.append(await client.submit(request(tmp_path / f"c{i}", "true\n", nodes=1)))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    assert sorted(ids, key=int) == [str(i) for i in range(1, 9)]


async def test_local_jobs_outlive_the_client_that_submitted_them(
    state_root: Path, tmp_path: Path
) -> None:
    first = make_client("local", state_root)
    job_id = await first.submit(request(tmp_path / "kept", "sleep 300\n"))
    await wait_for(first, job_id, running)
    del first  # an agent restart: a new adapter on the same state directory

    second = make_client("local", state_root)
    [job] = [j for j in await second.status() if j.scheduler_id == job_id]
    assert (job.state, job.name, job.nodes) == ("running", "tw-test-kept", 2)
    await second.cancel(job_id)
    assert (await wait_for(second, job_id, finished) or job).reason == "CANCELLED"


async def test_local_fanout_starts_one_copy_per_node(state_root: Path, tmp_path: Path) -> None:
    adapter = LocalScheduler(state_dir=state_root / "local")
    client = SchedulerClient(adapter, timeout=20)
    wd = tmp_path / "fan"
    out = shlex.quote(str(wd / "nodes"))
    launch = shlex.join([*adapter.node_launch_argv(3), "sh", "-c", "echo $TIDEWATER_NODE_INDEX"])
    job_id = await client.submit(request(wd, f"{launch} > {out}\n", nodes=3))
    job = await wait_for(client, job_id, finished)
    assert job is not None and job.reason == "COMPLETED"
    assert sorted((wd / "nodes").read_text().split()) == ["0", "1", "2"]


async def test_local_failed_job_reports_failed(state_root: Path, tmp_path: Path) -> None:
    client = make_client("local", state_root)
    job_id = await client.submit(request(tmp_path / "bad", "exit 3\n"))
    job = await wait_for(client, job_id, finished)
    assert job is not None and (job.native_state, job.reason) == ("FAILED", "FAILED")


async def test_local_start_delay_keeps_a_job_pending_and_a_cancel_ends_the_wait(
    state_root: Path, tmp_path: Path
) -> None:
    adapter = LocalScheduler(state_dir=state_root / "local", kill_grace=1, start_delay=1.0)
    client = SchedulerClient(adapter, timeout=20)
    wd = tmp_path / "queued"
    job_id = await client.submit(request(wd, f"date +%s.%N > {shlex.quote(str(wd / 'ran'))}\n"))
    [pending] = [j for j in await client.status() if j.scheduler_id == job_id]
    assert pending.native_state == "PENDING" and pending.start_time is None
    job = await wait_for(client, job_id, finished)
    assert job is not None and job.reason == "COMPLETED"
    assert job.start_time is not None
    [rec] = [j for j in localexec.list_jobs(state_root / "local") if str(j.job_id) == job_id]
    assert job.start_time - rec.submit_time >= 1.0  # it waited its queue time

    waiting = LocalScheduler(state_dir=state_root / "local", kill_grace=1, start_delay=300)
    slow = SchedulerClient(waiting, timeout=20)
    job_id = await slow.submit(request(tmp_path / "never", "true\n"))
    await slow.cancel(job_id)
    job = await wait_for(slow, job_id, finished)
    assert job is not None and job.reason == "CANCELLED" and job.start_time is None
