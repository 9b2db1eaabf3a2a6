"""globus:// end to end: GlobusBackend and globus-sdk against a fake Transfer API.

The fake (``tests/fakes/globus_service.py``) serves on a loopback port and
really copies between two local directories standing for the site's
collection and a remote one. Holding a task ACTIVE is the fake's gate (an
event), never a sleep; the task deadline is scaled down where a test needs
it to pass.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tidewater.agents.settings import SiteSection, SiteSettings, TransfersSection, write_token
from tidewater.agents.transfers import Item, Moved, TransferError, make_backend, parse_url
from tidewater.agents.transfers.base import Direction, digest
from tidewater.agents.transfers.globus import GlobusBackend

from ..fakes.globus_service import GlobusService
from .procs import free_port

pytestmark = pytest.mark.integration

TOKEN = "fake-transfer-token"
SITE = "5e7e5d1a-0000-4000-8000-00000000517e"
REMOTE = "8e40e7e0-0000-4000-8000-0000000be40e"
WHOLE_DISK = "d15c0000-0000-4000-8000-0000000d15c0"  # a collection rooted at /
PROMPT = 10.0  # seconds within which an unreachable API or a deadline must be reported
DEADLINE = 0.5  # a scaled-down task deadline


@dataclass
class World:
    svc: GlobusService
    tmp: Path
    site_root: Path  # what the site's collection exposes; the work root is site_root/work
    remote: Path  # the remote collection's root
    token_file: Path

    @property
    def work(self) -> Path:
        return self.site_root / "work"

    def settings(self, **transfers: Any) -> SiteSettings:
        options: dict[str, Any] = {
            "globus_endpoint": SITE, "globus_work_root": "/work",
            "globus_token_file": str(self.token_file), "globus_base_url": self.svc.url,
            "globus_poll_interval": 0.02,
        }
        options.update(transfers)
        return SiteSettings(site=SiteSection(name="globus-test", work_root=str(self.work)),
                            transfers=TransfersSection(**options), directory=str(self.tmp))

    def backend(self, **transfers: Any) -> GlobusBackend:
        backend = make_backend("globus", self.settings(**transfers))
        assert isinstance(backend, GlobusBackend)
        return backend

    def item(self, direction: Direction, remote_path: str, local: str,
             endpoint: str = REMOTE) -> Item:
        return Item(direction, parse_url(f"globus://{endpoint}{remote_path}"), self.work / local)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    site_root, remote = tmp_path / "site-collection", tmp_path / "remote-collection"
    (site_root / "work").mkdir(parents=True)
    remote.mkdir()
    token_file = tmp_path / "globus-token"
    write_token(token_file, TOKEN)
    endpoints = {SITE: site_root, REMOTE: remote, WHOLE_DISK: Path("/")}
    async with GlobusService(endpoints, token=TOKEN) as svc:
        yield World(svc, tmp_path, site_root, remote, token_file)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path) -> Path:
    write(root / "x.txt", b"hello\n")
    write(root / "sub" / "y.bin", os.urandom(300_000))
    write(root / "sub" / "deeper" / "z.bin", b"")
    (root / "empty").mkdir(parents=True)
    return root


def partials(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(".tw-partial-*")]


def moved(result: Moved | TransferError) -> Moved:
    assert isinstance(result, Moved), f"expected the item to arrive, got {result!r}"
    return result


def failed(result: Moved | TransferError) -> TransferError:
    assert isinstance(result, TransferError), f"expected the item to fail, got {result!r}"
    return result


async def test_file_and_tree_in_and_out(world: World) -> None:
    w = world
    source_file = write(w.remote / "data" / "a.bin", os.urandom(1_500_000))
    source_tree = make_tree(w.remote / "data" / "tree")
    out_file = write(w.work / "t1" / "out.bin", os.urandom(700_000))
    out_tree = make_tree(w.work / "t1" / "outtree")
    items = [
        w.item("in", "/data/a.bin", "t1/a.bin"),
        w.item("in", "/data/tree", "t1/tree"),
        w.item("out", "/results/out.bin", "t1/out.bin"),
        w.item("out", "/results/outtree", "t1/outtree"),
    ]

    results = await w.backend().run(items)

    assert moved(results[0]) == digest(source_file) == digest(w.work / "t1" / "a.bin")
    assert moved(results[1]) == digest(source_tree) == digest(w.work / "t1" / "tree")
    assert (w.work / "t1" / "tree" / "empty").is_dir()
    assert moved(results[2]) == digest(out_file) == digest(w.remote / "results" / "out.bin")
    assert moved(results[3]) == digest(out_tree) == digest(w.remote / "results" / "outtree")
    assert partials(w.site_root, w.remote) == []
    # One task per direction, each asking Globus to verify checksums.
    tasks = list(w.svc.tasks.values())
    assert len(tasks) == 2
    assert all(t.status == "SUCCEEDED" and t.verify_checksum for t in tasks)


async def test_checksum_off_still_reports_sizes(world: World) -> None:
    w = world
    write(w.remote / "data" / "a.bin", b"x" * 1000)
    make_tree(w.remote / "data" / "tree")
    results = await w.backend(checksum=False).run([
        w.item("in", "/data/a.bin", "t1/a.bin"), w.item("in", "/data/tree", "t1/tree"),
    ])
    assert moved(results[0]) == Moved(1000, "")
    assert moved(results[1]) == Moved(digest(w.remote / "data" / "tree").size, "")
    assert not any(t.verify_checksum for t in w.svc.tasks.values())


async def test_inputs_replace_what_was_there(world: World) -> None:
    w = world
    source = write(w.remote / "data" / "a.bin", b"new contents")
    write(w.work / "t1" / "a.bin", b"old contents, longer than the new")
    results = await w.backend().run([w.item("in", "/data/a.bin", "t1/a.bin")])
    assert moved(results[0]) == digest(source) == digest(w.work / "t1" / "a.bin")


async def test_missing_source_fails_that_item_only(world: World) -> None:
    w = world
    source = write(w.remote / "data" / "a.bin", os.urandom(10_000))
    items = [w.item("in", "/data/a.bin", "t1/a.bin"), w.item("in", "/data/nope.bin", "t1/b.bin"),
             w.item("out", "/results/nope.bin", "t1/never-written.bin")]

    results = await w.backend().run(items)

    assert moved(results[0]) == digest(source)
    missing = failed(results[1])
    assert missing.url == items[1].remote.url
    assert "No such file or directory" in missing.message  # the service's own words
    assert "/data/nope.bin" in missing.message
    assert missing.retryable  # the data may still be on its way
    local_missing = failed(results[2])
    assert "no such file or directory" in local_missing.message
    assert not local_missing.retryable
    assert not (w.work / "t1" / "b.bin").exists()
    assert partials(w.site_root, w.remote) == []


async def test_source_vanishing_during_the_task_fails_that_item_only(world: World) -> None:
    w = world
    kept = write(w.remote / "data" / "kept.bin", os.urandom(20_000))
    gone = write(w.remote / "data" / "gone.bin", os.urandom(20_000))
    items = [w.item("in", "/data/gone.bin", "t1/gone.bin"),
             w.item("in", "/data/kept.bin", "t1/kept.bin")]
    results: list[Moved | TransferError] = []
    w.svc.gate = anyio.Event()

    async def run() -> None:
        results.extend(await w.backend().run(items))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await w.svc.wait_for_tasks(1)  # stat'ed and submitted; the task is held ACTIVE
        gone.unlink()
        w.svc.gate.set()

    error = failed(results[0])
    assert "FILE_NOT_FOUND" in error.message and "No such file or directory" in error.message
    assert error.retryable
    assert moved(results[1]) == digest(kept)
    assert not (w.work / "t1" / "gone.bin").exists()
    assert partials(w.site_root) == []


async def test_refused_destination_fails_the_task_but_not_what_landed(world: World) -> None:
    w = world
    good = write(w.work / "t1" / "good.bin", os.urandom(5_000))
    write(w.work / "t1" / "bad.bin", b"escape attempt")
    items = [w.item("out", "/results/good.bin", "t1/good.bin"),
             w.item("out", "/../escaped.bin", "t1/bad.bin")]

    results = await w.backend().run(items)

    assert moved(results[0]) == digest(good) == digest(w.remote / "results" / "good.bin")
    error = failed(results[1])
    assert "PERMISSION_DENIED" in error.message and "Path not allowed" in error.message
    assert not error.retryable
    assert not (w.tmp / "escaped.bin").exists()
    (task,) = w.svc.tasks.values()
    assert task.status == "FAILED"


async def test_wrong_token_is_a_clear_permanent_error(world: World) -> None:
    w = world
    write(w.remote / "data" / "a.bin", b"data")
    write_token(w.token_file, "not-the-token")
    items = [w.item("in", "/data/a.bin", "t1/a.bin"), w.item("out", "/results/x", "t1/x")]
    write(w.work / "t1" / "x", b"out")

    results = await w.backend().run(items)

    for item, result in zip(items, results, strict=True):
        error = failed(result)
        assert error.url == item.remote.url
        assert not error.retryable
        assert "401" in error.message and "Token is not active" in error.message
        assert str(w.token_file) in error.message  # says which file to fix
    assert w.svc.tasks == {}
    assert partials(w.site_root) == []


async def test_token_file_readable_by_others_is_refused(world: World) -> None:
    w = world
    w.token_file.chmod(0o644)
    results = await w.backend().run([w.item("in", "/data/a.bin", "t1/a.bin")])
    error = failed(results[0])
    assert not error.retryable
    assert f"chmod 600 {w.token_file}" in error.message
    assert w.svc.requests == []  # the token was never sent


async def test_unknown_remote_collection_is_not_found(world: World) -> None:
    w = world
    other = "0000dead-0000-4000-8000-000000000000"
    write(w.work / "t1" / "x", b"out")
    results = await w.backend().run([
        w.item("in", "/data/a.bin", "t1/a.bin", endpoint=other),
        w.item("out", "/results/x", "t1/x", endpoint=other),
    ])
    for result in results:
        error = failed(result)
        assert "EndpointNotFound" in error.message and other in error.message
        assert not error.retryable


async def test_unreachable_api_is_a_prompt_retryable_error(world: World) -> None:
    w = world
    write(w.work / "t1" / "x", b"out")
    backend = w.backend(globus_base_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    with anyio.fail_after(PROMPT):
        results = await backend.run([w.item("in", "/data/a.bin", "t1/a.bin"),
                                     w.item("out", "/results/x", "t1/x")])
    for result in results:
        error = failed(result)
        assert error.retryable
        assert "cannot reach the Globus Transfer API" in error.message
    assert partials(w.site_root) == []


async def test_task_past_its_deadline_is_cancelled(world: World) -> None:
    w = world
    write(w.remote / "data" / "a.bin", b"data")
    w.svc.gate = anyio.Event()  # never set: the task stays ACTIVE
    backend = w.backend()
    backend.task_deadline = DEADLINE

    with anyio.fail_after(PROMPT):
        results = await backend.run([w.item("in", "/data/a.bin", "t1/a.bin")])

    error = failed(results[0])
    assert error.retryable
    assert "did not finish" in error.message
    (task,) = w.svc.tasks.values()
    assert task.status == "FAILED" and task.fatal_error == {
        "code": "CANCELED", "description": "The task was canceled by the user"}
    assert partials(w.site_root) == []
    assert not (w.work / "t1" / "a.bin").exists()


async def test_cancelled_run_cancels_its_task(world: World) -> None:
    w = world
    write(w.remote / "data" / "a.bin", b"data")
    w.svc.gate = anyio.Event()

    async with anyio.create_task_group() as tg:
        tg.start_soon(w.backend().run, [w.item("in", "/data/a.bin", "t1/a.bin")])
        await w.svc.wait_for_tasks(1)
        tg.cancel_scope.cancel()

    (task,) = w.svc.tasks.values()
    assert task.status == "FAILED" and task.fatal_error is not None
    assert task.fatal_error["code"] == "CANCELED"
    assert partials(w.site_root) == []


async def test_wrong_globus_work_root_is_explained(world: World) -> None:
    w = world
    write(w.remote / "data" / "a.bin", b"data")
    results = await w.backend(globus_work_root="/elsewhere").run(
        [w.item("in", "/data/a.bin", "t1/a.bin")])
    error = failed(results[0])
    assert not error.retryable
    assert "globus_work_root" in error.message


async def test_default_work_root_is_the_local_path(world: World) -> None:
    """With globus_work_root "", the collection sees the work root at its local path."""
    w = world
    source = write(w.remote / "data" / "a.bin", os.urandom(4_000))
    backend = w.backend(globus_endpoint=WHOLE_DISK, globus_work_root="")
    results = await backend.run([w.item("in", "/data/a.bin", "t1/a.bin")])
    assert moved(results[0]) == digest(source) == digest(w.work / "t1" / "a.bin")


def test_missing_configuration_is_refused(tmp_path: Path) -> None:
    site = SiteSection(name="s", work_root=str(tmp_path))
    for transfers, words in [
        (TransfersSection(globus_token_file="t"), "globus_endpoint"),
        (TransfersSection(globus_endpoint=SITE), "globus_token_file"),
        (TransfersSection(globus_endpoint=SITE, globus_token_file="t",
                          globus_work_root="work"), "globus_work_root"),
    ]:
        with pytest.raises(TransferError, match=words) as info:
            make_backend("globus", SiteSettings(site=site, transfers=transfers))
        assert not info.value.retryable
    # The settings file spells them as documented.
    raw = {"site": {"name": "s"}, "transfers": {"globus_endpoint": SITE,
                                                "globus_poll_interval": 1.5}}
    assert msgspec.convert(raw, SiteSettings).transfers.globus_poll_interval == 1.5
