"""Tasks that misbehave, among a workload of good ones: a task that hangs past its timeout,
a task that floods its stdout, and a pilot whose work directory is on a full filesystem.
None of them may hang the system, kill a pilot, or make a task vanish."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from tidewater import TaskSpec
from tidewater.states import FINAL

from .invariants import assert_holds
from .report import Row
from .workload import SITE, world

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

FLOOD_BYTES = 200_000_000
TAIL_BYTES = 4096  # Limits.tail_bytes: what comes back of a task's output
NO_SPACE = "No space left on device"


async def test_hung_and_flooding_tasks(tmp_path: Path, chaos_seed: int,
                                       chaos_report: list[Row]) -> None:
    """A task that hangs ends RUN_TIMEOUT, is retried, then FAILED; one that writes 200 MB
    to stdout finishes with only the tail in its result; the pilots live on."""
    n = 500
    async with world(tmp_path, "hang+flood", chaos_seed, chaos_report) as w:
        await w.start_agent()
        await w.start_job()
        for p in ("p0", "p1"):
            await w.start_pilot(p)
        specs = w.work(n)
        hang = TaskSpec(app="hang", site=SITE, timeout=1.0, max_retries=1)
        flood = TaskSpec(app="flood", site=SITE, params={"n": str(FLOOD_BYTES)})
        where = sorted(w.rng.sample(range(n // 10, n // 2), 4))
        for k, i in enumerate(where):
            specs.insert(i, hang if k % 2 == 0 else flood)
        w.row.faults = ["2 tasks hung (timeout 1s, 1 retry)",
                        f"2 floods of {FLOOD_BYTES // 10**6} MB to stdout"]
        tasks = await w.submit(specs)
        await w.settle(tasks)
        infos = {i.id: i for i in await w.client.wait(tasks)}
        events = w.events()
        v = w.verdict(tasks)
        alive = {p: w.c.pilots[p].proc.returncode is None for p in ("p0", "p1", "agent-0")}
        job = await w.job()
        hung = [tasks[i].id for i, s in enumerate(specs) if s.app == "hang"]
        floods = [tasks[i].id for i, s in enumerate(specs) if s.app == "flood"]
        for tid in hung:
            mine = [e for e in events if e.task_id == tid]
            first = next(e.time for e in mine if e.to_state == "RUNNING")
            timeouts = [e.time for e in mine if e.to_state == "RUN_TIMEOUT"]
            ended = [e.time for e in mine if e.to_state == "FAILED"]
            # detect: the first attempt started -> it was timed out; recover: -> FAILED
            w.row.detect.append(timeouts[0] - first if timeouts else None)
            w.row.recover.append(ended[0] - first if ended else None)
    assert_holds(v)
    assert alive == dict.fromkeys(alive, True) and job.pilots == 1
    for tid in hung:
        info = infos[tid]
        assert info.state == "FAILED" and "timed out" in info.error, info
        assert sum(1 for e in events if e.task_id == tid and e.to_state == "RUN_TIMEOUT") == 2
    for tid in floods:
        info = infos[tid]
        assert info.state == "JOB_FINISHED", info.error
        assert info.stdout_tail.endswith("END-OF-FLOOD\n")
        assert len(info.stdout_tail.encode()) <= TAIL_BYTES
    others = set(infos) - set(hung)
    assert {infos[t].state for t in others} == {"JOB_FINISHED"}


async def test_pilot_on_a_full_filesystem(tmp_path: Path, full_tmpfs: Path, chaos_seed: int,
                                          chaos_report: list[Row]) -> None:
    """A pilot whose work directory is on a full filesystem hands back the few tasks it
    was sent (recorded attempts, retried elsewhere, saying why) and stops taking work:
    it exits non-zero naming its work directory, instead of failing every task it would
    be sent. Nothing vanishes, nothing hangs, no task fails for the node's fault."""
    n = 500
    async with world(tmp_path, "full-workdir", chaos_seed, chaos_report) as w:
        await w.start_agent()
        await w.start_job()
        for p in ("p0", "p1"):
            await w.start_pilot(p)
        tasks = await w.submit(w.work(n))
        at = w.rng.randint(n // 10, n // 3)
        await w.reach(at)
        t0 = time.time()
        full = await w.start_pilot("full", cores=1, workdir=full_tmpfs)
        with anyio.fail_after(60):
            code = await full.proc.wait()
        await w.settle(tasks)
        infos = {i.id: i for i in await w.client.wait(tasks)}
        events = w.events()
        v = w.verdict(tasks)
        alive = {p: w.c.pilots[p].proc.returncode is None for p in ("p0", "p1", "agent-0")}
        # Every attempt the full pilot took, and how it ended.
        on_full: dict[int, list[str]] = {}
        last_pilot: dict[int, str] = {}
        for e in events:
            if e.to_state == "RUNNING":
                last_pilot[e.task_id] = str(e.data.get("pilot"))
            elif e.to_state in ("RUN_ERROR", "RUN_DONE", "RUN_TIMEOUT") and \
                    last_pilot.get(e.task_id) == "full":
                on_full.setdefault(e.task_id, []).append(
                    f"{e.to_state}: {e.data.get('reason', '')}")
        failed = [t for t, i in infos.items() if i.state == "FAILED"]
        handed = sum(map(len, on_full.values()))
        w.row.faults = [f"pilot on a full fs from {at}: {handed} attempts handed back, "
                        f"pilot stopped (exit {code}), {len(failed)} tasks FAILED"]
        # detect: the full pilot started -> its first attempt handed back;
        # recover: -> the last task done
        first = [e.time for e in events if e.to_state == "RUN_TIMEOUT"]
        w.row.detect.append(min(first) - t0 if first else None)
        w.row.recover.append(max(e.time for e in events if e.to_state in FINAL) - t0)
    assert_holds(v)
    assert alive == dict.fromkeys(alive, True)
    assert code != 0
    assert any(f"cannot use its work directory {full_tmpfs}" in ln and NO_SPACE in ln
               for ln in full.lines), full.log()
    assert on_full, "the pilot on the full filesystem was given no work"
    # It took no more than one round of its credit (1 core + a prefetch of 2).
    assert handed <= 3, on_full
    for outcomes in on_full.values():
        assert all(o.startswith("RUN_TIMEOUT") and NO_SPACE in o for o in outcomes), outcomes
    assert failed == [], [infos[t].error for t in failed]
