"""The agent's transfer engine with a scripted backend: batching, retries, refusals.

The backends themselves are tested against real servers (tests/integration);
here a backend that follows a script shows how the engine groups, retries and
reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from tidewater import proto as P
from tidewater.agents.settings import SiteSection, SiteSettings, TransfersSection
from tidewater.agents.transfers.base import Backend, Item, Moved
from tidewater.agents.transfers.engine import Engine
from tidewater.errors import TransferError


class Scripted(Backend):
    """Fails each URL as many times as ``failures`` says, then succeeds."""

    def __init__(self, failures: dict[str, int], *, retryable: bool = True) -> None:
        self.failures = dict(failures)
        self.retryable = retryable
        self.batches: list[list[str]] = []
        self.gate = anyio.Event()
        self.gate.set()
        self.held: set[str] | None = None
        """Hosts whose batches wait for ``gate`` (None: every host)."""

    async def run(self, items: Sequence[Item]) -> list[Moved | TransferError]:
        self.batches.append([i.remote.url for i in items])
        if self.held is None or any(i.remote.host in self.held for i in items):
            await self.gate.wait()
        out: list[Moved | TransferError] = []
        for i in items:
            left = self.failures.get(i.remote.url, 0)
            if left:
                self.failures[i.remote.url] = left - 1
                out.append(TransferError(i.remote.url, "Connection refused",
                                         retryable=self.retryable))
            else:
                out.append(Moved(size=len(i.remote.url), sha256="ab" * 32))
        return out


def settings(tmp: Path, **kw: object) -> SiteSettings:
    t = TransfersSection(**{"retries": 2, "retry_delay": 0.001, **kw})  # type: ignore[arg-type]
    return SiteSettings(site=SiteSection(name="s", work_root=str(tmp / "work")), transfers=t)


async def run_stages(tmp: Path, backend: Scripted, stages: list[P.Stage],
                     **kw: object) -> list[P.StageResult]:
    """Run stages until each has reported every item, or a failure; one result per stage
    (items in the order they were reported)."""
    by_task: dict[int, list[P.ItemResult]] = {s.task_id: [] for s in stages}
    size = {s.task_id: len(s.items) for s in stages}
    done = anyio.Event()

    def over(task: int) -> bool:
        got = by_task[task]
        return len(got) == size[task] or any(not i.ok for i in got)

    def report(r: P.StageResult) -> None:
        by_task[r.task_id].extend(r.items)
        if all(over(t) for t in by_task):
            done.set()

    engine = Engine(settings(tmp, **kw), report, lambda scheme, s: backend)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        for st in stages:
            engine.submit(st)
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    return [P.StageResult(task_id=s.task_id, direction=s.direction, items=by_task[s.task_id])
            for s in stages]


def stage(task: int, *urls: str, direction: str = "in") -> P.Stage:
    return P.Stage(task_id=task, direction=direction, workdir=f"tasks/{task}",  # type: ignore[arg-type]
                   items=[P.StageItem(path=f"f{i}", url=u) for i, u in enumerate(urls)])


async def test_items_of_one_remote_share_batches_and_others_get_their_own(tmp_path: Path) -> None:
    b = Scripted({})
    b.gate = anyio.Event()  # hold the first batch so the rest queue up behind it
    stages = [stage(1, "sftp://u@a/1"), stage(2, "sftp://u@a/2", "sftp://u@a/3"),
              stage(3, "sftp://u@b/4")]
    async with anyio.create_task_group() as tg:
        async def release() -> None:
            await anyio.wait_all_tasks_blocked()
            b.gate.set()
        tg.start_soon(release)
        results = await run_stages(tmp_path, b, stages)
    assert sorted(r.task_id for r in results) == [1, 2, 3]
    assert all(i.ok for r in results for i in r.items)
    by_remote = sorted(sorted(batch) for batch in b.batches)
    assert ["sftp://u@b/4"] in by_remote
    assert sum(len(x) for x in by_remote) == 4  # each item moved once


async def test_a_failing_item_is_retried_then_reported_with_the_backends_words(
    tmp_path: Path,
) -> None:
    b = Scripted({"sftp://u@a/flaky": 2, "sftp://u@a/dead": 10})
    r1, r2 = await run_stages(tmp_path, b, [stage(1, "sftp://u@a/flaky", "sftp://u@a/fine"),
                                            stage(2, "sftp://u@a/dead")])
    # Each item is reported when it is over: the one that needed no retry first.
    assert [(i.path, i.ok, i.attempts) for i in r1.items] == [("f1", True, 1), ("f0", True, 3)]
    (dead,) = r2.items
    assert not dead.ok and dead.attempts == 3
    assert dead.error == "Connection refused (after 3 attempts)"


async def test_an_item_failing_for_good_ends_its_stage(tmp_path: Path) -> None:
    b = Scripted({"sftp://u@a/dead": 1}, retryable=False)
    b.gate = anyio.Event()
    b.held = {"b"}
    (r,) = await run_stages(tmp_path, b, [stage(1, "sftp://u@a/dead", "sftp://b@b/slow")],
                            max_batch=1)
    # The failure is reported at once; the other item (held) is never reported.
    assert [(i.path, i.ok) for i in r.items] == [("f0", False)]
    b.gate.set()


async def test_a_non_retryable_error_is_not_retried(tmp_path: Path) -> None:
    b = Scripted({"sftp://u@a/x": 1}, retryable=False)
    (r,) = await run_stages(tmp_path, b, [stage(1, "sftp://u@a/x")])
    assert not r.items[0].ok and r.items[0].attempts == 1


async def test_a_digest_other_than_expected_fails_the_item(tmp_path: Path) -> None:
    b = Scripted({})
    st = P.Stage(task_id=1, direction="in", workdir="tasks/1", items=[
        P.StageItem(path="a", url="sftp://u@a/x", sha256="cd" * 32)])
    (r,) = await run_stages(tmp_path, b, [st], retries=0)
    assert not r.items[0].ok and "SHA-256 mismatch" in r.items[0].error


@pytest.mark.parametrize(("workdir", "path"), [("tasks/1", "../../x"), ("../up", "a"),
                                               ("tasks/1", "/etc/passwd")])
async def test_paths_leading_out_are_refused_before_any_transfer(
    tmp_path: Path, workdir: str, path: str,
) -> None:
    b = Scripted({})
    st = P.Stage(task_id=1, direction="in", workdir=workdir,
                 items=[P.StageItem(path=path, url="sftp://u@a/x")])
    (r,) = await run_stages(tmp_path, b, [st])
    assert not r.items[0].ok and r.items[0].error.startswith("refused")
    assert b.batches == []


async def test_a_repeated_stage_is_not_started_twice_and_a_cancelled_one_reports_nothing(
    tmp_path: Path,
) -> None:
    b = Scripted({})
    b.gate = anyio.Event()
    results: list[P.StageResult] = []
    reported = anyio.Event()

    def report(r: P.StageResult) -> None:
        results.append(r)
        reported.set()

    engine = Engine(settings(tmp_path), report, lambda scheme, s: b)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        engine.submit(stage(1, "sftp://u@a/1"))
        engine.submit(stage(1, "sftp://u@a/1"))
        engine.submit(stage(2, "sftp://u@a/2"))
        await anyio.wait_all_tasks_blocked()
        engine.cancel(2)
        b.gate.set()
        with anyio.fail_after(5):
            await reported.wait()
        await anyio.wait_all_tasks_blocked()  # task 2's batch, if any, has settled too
        tg.cancel_scope.cancel()
    assert [r.task_id for r in results] == [1]
    assert sum(batch.count("sftp://u@a/1") for batch in b.batches) == 1


async def test_partials_left_by_an_agent_that_died_are_removed(tmp_path: Path) -> None:
    wd = tmp_path / "work" / "tasks" / "1"
    wd.mkdir(parents=True)
    stale = wd / ".tw-partial-0123abcd-f0"
    stale.write_bytes(b"half a file")
    (wd / ".tw-partial-0123abcd-f0x").write_bytes(b"another item's")
    (r,) = await run_stages(tmp_path, Scripted({}), [stage(1, "sftp://u@a/x")])
    assert r.items[0].ok
    assert sorted(p.name for p in wd.iterdir()) == [".tw-partial-0123abcd-f0x"]
