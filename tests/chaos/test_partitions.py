"""Network partitions: a pilot and the site agent (with its batch job's pilot) live in a
network namespace whose only link to the controller's host is cut, then restored.

* shorter than the lease (but many heartbeats long): the island keeps its tasks;
  their results, held while the link was down, are accepted once, as attempt 1;
* longer than the lease: the island's running tasks are retried elsewhere, and
  the results it sends once the link is back are ignored.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from ..integration.procs import HEARTBEAT, LEASE, until
from .conftest import Netns
from .invariants import assert_holds
from .report import Row
from .workload import World, world

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.netns]

N = 600
# Mostly short tasks; one in twenty long enough to be caught running by the cut.
SLEEPS = (0.02,) * 19 + (1.2,)


async def islands(w: World, ns: Netns, port: int) -> tuple[set[str], list[str]]:
    """The agent, its job's pilot and pilot ``island`` in the namespace; p0, p1 on the host.

    Returns the pilots in the namespace and the processes the test started there."""
    url = f"ws://{ns.host_ip}:{port}"
    await w.start_agent(prefix=ns.prefix, url=url)
    job_pilot = await w.start_job()
    await w.start_pilot("island", prefix=ns.prefix, url=url)
    for p in ("p0", "p1"):
        await w.start_pilot(p)
    return {"island", job_pilot}, ["island", "agent-0"]


async def cut_when_busy(w: World, ns: Netns, away: set[str], seconds: float) -> tuple[
        float, float, set[int]]:
    """Cut the link once the island runs something; restore it ``seconds`` later.

    Returns (cut time, heal time, tasks the store showed running on the island at the cut).
    """
    running: set[int] = set()

    async def busy() -> bool:
        running.update(w.running_on(away))
        return bool(running)

    await until(busy, what="a task running on the island")
    t0 = time.time()
    ns.cut()
    # Holding the partition for a set time is the fault itself, not a synchronisation.
    await anyio.sleep(seconds)
    ns.heal()
    return t0, time.time(), running


def listen_everywhere(lease: float) -> tuple[str, ...]:
    # The namespace reaches the controller on the host's veth address: not loopback, so
    # plaintext must be allowed explicitly (the test's tokens never leave this machine).
    return ("--host", "0.0.0.0", "--allow-plaintext", "--lease-timeout", str(lease))


async def test_short_partition_keeps_the_work(tmp_path: Path, netns: Netns, chaos_seed: int,
                                              chaos_report: list[Row]) -> None:
    lease = 2 * LEASE
    async with world(tmp_path, "partition<lease", chaos_seed, chaos_report,
                     controller_args=listen_everywhere(lease)) as w:
        away, procs = await islands(w, netns, w.c.port)
        at = w.rng.randint(N // 5, N // 2)
        seconds = round(w.rng.uniform(4 * HEARTBEAT, lease / 2), 2)
        tasks = await w.submit(w.work(N, SLEEPS))
        await w.reach(at)
        t0, _healed, kept = await cut_when_busy(w, netns, away, seconds)
        w.row.faults.append(f"cut {seconds:g}s (lease {lease:g}s) at {at}")

        async def accepted() -> bool:  # the results the island held while cut off
            return not w.rows(f"SELECT id FROM tasks WHERE id IN ({','.join(map(str, kept))}) "
                              "AND state != 'JOB_FINISHED'")

        await until(accepted, what="the island's held results")
        w.row.detect.append(None)
        w.row.recover.append(time.time() - t0)
        await w.settle(tasks)
        lost = w.losses(away, t0)
        v = w.verdict(tasks, kept=kept)
        alive = {p: w.c.pilots[p].proc.returncode is None for p in procs}
        job = await w.job()
    assert_holds(v)
    assert v.states["JOB_FINISHED"] == N
    # Nobody was declared lost, nothing was retried.
    assert lost == [] and v.retried == 0
    assert alive == dict.fromkeys(procs, True) and job.pilots == 1


async def test_long_partition_retries_elsewhere(tmp_path: Path, netns: Netns, chaos_seed: int,
                                                chaos_report: list[Row]) -> None:
    async with world(tmp_path, "partition>lease", chaos_seed, chaos_report,
                     controller_args=listen_everywhere(LEASE)) as w:
        away, procs = await islands(w, netns, w.c.port)
        at = w.rng.randint(N // 5, N // 2)
        seconds = round(w.rng.uniform(LEASE + 1.0, LEASE + 2.0), 2)
        tasks = await w.submit(w.work(N, SLEEPS))
        await w.reach(at)
        t0, healed, running = await cut_when_busy(w, netns, away, seconds)
        w.row.faults.append(f"cut {seconds:g}s (lease {LEASE:g}s) at {at}")
        # The island comes back: it reconnects as itself and is served again.
        await w.c.pilots["island"].wait_for("pilot island connected", count=2, timeout=30)
        await w.settle(tasks)
        lost = w.losses(away, t0)
        retried = {e.task_id for e in lost}
        w.row.detect.append(min(e.time for e in lost) - t0 if lost else None)
        w.row.recover.append(max(w.finished_at(retried)) - t0 if retried else None)
        v = w.verdict(tasks)
        final = {int(r[0]): (int(r[1]), str(r[2])) for r in w.rows(
            "SELECT id, attempt, pilot FROM tasks")}
        alive = {p: w.c.pilots[p].proc.returncode is None for p in procs}
        job = await w.job()
    assert v.states["JOB_FINISHED"] == N
    assert retried, "nothing was running on the island when the link was cut"
    # What ran on the island across the cut was retried: the accepted result is a later
    # attempt's, the island's own (sent after the link came back) was ignored.
    for tid in retried:
        assert final[tid][0] >= 2, f"task {tid} kept attempt {final[tid][0]}"
    finished_before_cut = running - retried
    assert all(final[t][0] == 1 for t in finished_before_cut)
    assert healed - t0 >= LEASE
    assert alive == dict.fromkeys(procs, True) and job.state == "running"
    # The island holds prefetched tasks when the link is cut and starts them while cut
    # off: those attempts must be on record too (RUNNING, unconfirmed, then RUN_TIMEOUT).
    assert_holds(v)
