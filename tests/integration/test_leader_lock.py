"""The leader's lock on each backend, the PostgreSQL commit fence, and abandoned writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tidewater.controller.store import schema
from tidewater.controller.store.leader import APP_NAME, Lead, fence, leadership
from tidewater.controller.store.open import open_store
from tidewater.errors import LeadershipLost, StoreError

from . import pg
from .procs import until
from .test_store_contract import a_task, world

pytestmark = [pytest.mark.integration]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


async def test_a_second_controller_waits_for_the_lock_and_gets_it_when_released(
    url: str,
) -> None:
    order: list[str] = []
    release = anyio.Event()

    async def first(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with leadership(url, check=0.05, waiting=lambda _w: order.append("??")):
            order.append("first leads")
            task_status.started()
            await release.wait()
            order.append("first lets go")

    async def second() -> None:
        async with leadership(url, check=0.05, waiting=lambda w: order.append(f"waits on {w}")):
            order.append("second leads")

    async with anyio.create_task_group() as tg:
        await tg.start(first)
        tg.start_soon(second)

        async def waiting() -> bool:
            return len(order) == 2

        await until(waiting, what="the second to stand by")
        release.set()
    where = url.removeprefix("sqlite://") + ".lock" if url.startswith("sqlite") else url
    assert order == ["first leads", f"waits on {where}", "first lets go", "second leads"]


async def test_abandoned_writes_are_neither_committed_nor_acknowledged(url: str) -> None:
    acked: list[int] = []
    async with open_store(url) as store:
        await store.commit(world())
        for i in (1, 2, 3):
            store.write_nowait([schema.insert_task(a_task(i))], lambda i=i: acked.append(i))
        assert store.abandon() == 3
        with pytest.raises(StoreError, match="closed"):
            store.write_nowait([schema.insert_task(a_task(4))])
    assert acked == []
    async with open_store(url) as again:
        assert await again.task_states(1, [1, 2, 3, 4]) == {}


@pytest.mark.postgres
async def test_a_fenced_store_commits_nothing_once_the_lock_session_ends(
    postgres_url: str,
) -> None:
    acked: list[str] = []

    async def lead_and_write() -> None:
        async with leadership(postgres_url, check=0.05, waiting=lambda _w: None) as lead:
            store = open_store(postgres_url)
            fence(store, lead)
            async with store:
                await store.commit(world())
                await store.commit([schema.insert_task(a_task(1))])
                (pid,) = pg.rows(postgres_url, "SELECT pid FROM pg_stat_activity WHERE "
                                 "application_name = ? AND datname = current_database()",
                                 (APP_NAME,))[0]
                pg.admin(f"SELECT pg_terminate_backend({pid})")
                store.write_nowait([schema.insert_task(a_task(2))], lambda: acked.append("2"))
                await anyio.sleep_forever()  # the writer's failure cancels this

    with pytest.raises(ExceptionGroup) as info:
        await lead_and_write()
    (err,) = info.value.exceptions
    assert isinstance(err, LeadershipLost) and "two controllers never serve" in str(err)
    assert acked == []
    async with open_store(postgres_url) as again:
        assert set(await again.task_states(1, [1, 2])) == {1}


@pytest.mark.postgres
async def test_watch_raises_when_the_lock_session_ends(postgres_url: str) -> None:
    async with leadership(postgres_url, check=0.05, waiting=lambda _w: None) as lead:
        (pid,) = pg.rows(postgres_url, "SELECT pid FROM pg_stat_activity WHERE "
                         "application_name = ? AND datname = current_database()",
                         (APP_NAME,))[0]
        watched: Lead = lead
        pg.admin(f"SELECT pg_terminate_backend({pid})")
        with anyio.fail_after(10), pytest.raises(LeadershipLost, match="lost the leader's lock"):
            await watched.watch()
