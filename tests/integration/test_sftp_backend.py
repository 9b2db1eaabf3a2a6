"""The sftp:// backend against a real OpenSSH server on loopback (the ``sshd`` fixture).

"Remote" paths are on this machine too, so what landed on either side is
compared with :func:`digest` of its source. Host keys are checked for real:
the fixture's known_hosts holds the server's key.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from tidewater.agents.settings import SiteSection, SiteSettings, TransfersSection
from tidewater.agents.transfers import make_backend
from tidewater.agents.transfers.base import Item, Moved, digest, parse_url
from tidewater.agents.transfers.sftp import SftpBackend
from tidewater.errors import TransferError

from .sshd import Sshd, free_port, keygen

pytestmark = [pytest.mark.integration, pytest.mark.sshd]

BIG = 50 * 1024 * 1024


def settings(sshd: Sshd, **transfers: object) -> SiteSettings:
    t = {"sftp_identity": str(sshd.identity), "sftp_known_hosts": str(sshd.known_hosts),
         **transfers}
    return SiteSettings(site=SiteSection(name="test"), transfers=TransfersSection(**t))


@pytest.fixture
async def backend(sshd: Sshd) -> AsyncIterator[SftpBackend]:
    b = make_backend("sftp", settings(sshd))
    assert isinstance(b, SftpBackend)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """big.bin (50 MiB of random bytes) and tree/ (nested, with an empty directory)."""
    root = tmp_path_factory.mktemp("sources")
    with open(root / "big.bin", "wb") as f:
        for _ in range(BIG // (1 << 20)):
            f.write(os.urandom(1 << 20))
    tree = root / "tree"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "a" / "empty-too").mkdir()
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "one.bin").write_bytes(os.urandom(300_000))  # more than one SFTP block
    (tree / "a" / "zero.bin").write_bytes(b"")
    (tree / "a" / "b" / "two.bin").write_bytes(os.urandom(4096))
    (tree / "a" / "b" / "c" / "three.bin").write_bytes(os.urandom(1_000_003))
    return root


def partials(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob(".tw-partial-*")]


def dirs_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


def item(sshd: Sshd, direction: str, remote: Path, local: Path) -> Item:
    return Item(direction, parse_url(sshd.url(remote)), local)


async def test_file_and_tree_arrive_whole_with_their_checksums(
    sshd: Sshd, backend: SftpBackend, sources: Path, tmp_path: Path,
) -> None:
    dest = tmp_path / "task"
    results = await backend.run([
        item(sshd, "in", sources / "big.bin", dest / "inputs" / "big.bin"),
        item(sshd, "in", sources / "tree", dest / "inputs" / "tree"),
    ])

    assert results == [digest(sources / "big.bin"), digest(sources / "tree")]
    assert (dest / "inputs" / "big.bin").read_bytes() == (sources / "big.bin").read_bytes()
    assert digest(dest / "inputs" / "tree") == digest(sources / "tree")
    assert dirs_of(dest / "inputs" / "tree") == dirs_of(sources / "tree")  # empty ones too
    assert partials(dest) == []


async def test_outputs_land_on_the_remote_and_replace_what_was_there(
    sshd: Sshd, backend: SftpBackend, sources: Path, tmp_path: Path,
) -> None:
    remote = tmp_path / "remote" / "results" / "run-1"  # parents do not exist yet
    out = [item(sshd, "out", remote / "big.bin", sources / "big.bin"),
           item(sshd, "out", remote / "tree", sources / "tree")]

    assert await backend.run(out) == [digest(sources / "big.bin"), digest(sources / "tree")]
    assert digest(remote / "big.bin") == digest(sources / "big.bin")
    assert digest(remote / "tree") == digest(sources / "tree")
    assert dirs_of(remote / "tree") == dirs_of(sources / "tree")

    # Sent again over an older, different version: replaced whole, nothing stale left.
    (remote / "big.bin").write_bytes(b"old")
    (remote / "tree" / "stale.txt").write_text("from an earlier run\n")
    assert await backend.run(out) == [digest(sources / "big.bin"), digest(sources / "tree")]
    assert digest(remote / "tree") == digest(sources / "tree")
    assert digest(remote / "big.bin") == digest(sources / "big.bin")
    assert partials(tmp_path) == []


async def test_without_checksum_sizes_still_come_back(
    sshd: Sshd, sources: Path, tmp_path: Path,
) -> None:
    b = SftpBackend(settings(sshd, checksum=False))
    try:
        results = await b.run([
            item(sshd, "in", sources / "tree", tmp_path / "in" / "tree"),
            item(sshd, "out", tmp_path / "out" / "tree", sources / "tree"),
        ])
    finally:
        await b.aclose()
    size = digest(sources / "tree").size
    assert results == [Moved(size, ""), Moved(size, "")]
    assert digest(tmp_path / "in" / "tree") == digest(sources / "tree")
    assert digest(tmp_path / "out" / "tree") == digest(sources / "tree")


async def test_a_missing_remote_path_fails_only_its_item(
    sshd: Sshd, backend: SftpBackend, sources: Path, tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere" / "data.csv"
    results = await backend.run([
        item(sshd, "in", sources / "tree" / "top.txt", tmp_path / "in" / "top.txt"),
        item(sshd, "in", missing, tmp_path / "in" / "data.csv"),
        item(sshd, "out", tmp_path / "remote" / "top.txt", sources / "tree" / "top.txt"),
    ])

    good_in, bad, good_out = results
    assert good_in == good_out == digest(sources / "tree" / "top.txt")
    assert isinstance(bad, TransferError)
    assert bad.url == sshd.url(missing)
    assert str(missing) in bad.message
    assert "No such file" in bad.message
    assert bad.retryable  # the data may still be on its way
    assert not (tmp_path / "in" / "data.csv").exists()
    assert partials(tmp_path) == []


async def test_a_missing_local_output_fails_with_its_path(
    sshd: Sshd, backend: SftpBackend, tmp_path: Path,
) -> None:
    (result,) = await backend.run([item(sshd, "out", tmp_path / "remote" / "x",
                                        tmp_path / "never-written")])
    assert isinstance(result, TransferError)
    assert str(tmp_path / "never-written") in result.message
    assert not (tmp_path / "remote").exists()


async def test_links_inside_a_remote_tree_are_refused(
    sshd: Sshd, backend: SftpBackend, tmp_path: Path,
) -> None:
    tree = tmp_path / "remote" / "tree"
    tree.mkdir(parents=True)
    (tree / "ok.txt").write_text("ok\n")
    (tree / "escape").symlink_to("/etc")

    (result,) = await backend.run([item(sshd, "in", tree, tmp_path / "in" / "tree")])

    assert isinstance(result, TransferError)
    assert "escape is a symbolic link" in result.message
    assert not result.retryable
    assert not (tmp_path / "in" / "tree").exists()
    assert partials(tmp_path) == []


async def test_a_refused_connection_fails_every_item_with_the_address(
    sshd: Sshd, tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    url = f"sftp://{sshd.user}@127.0.0.1:{port}{tmp_path}/x"
    b = SftpBackend(settings(sshd))
    try:
        results = await b.run([Item("in", parse_url(url), tmp_path / "x"),
                               Item("out", parse_url(url + "y"), tmp_path / "x")])
    finally:
        await b.aclose()

    for r in results:
        assert isinstance(r, TransferError)
        assert f"connection refused by 127.0.0.1:{port}" in r.message
        assert r.retryable
    assert [r.url for r in results if isinstance(r, TransferError)] == [url, url + "y"]


async def test_a_server_that_never_answers_times_out(sshd: Sshd, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        b = SftpBackend(settings(sshd, sftp_connect_timeout=0.5))
        try:
            (result,) = await b.run([Item("in", parse_url(
                f"sftp://{sshd.user}@127.0.0.1:{port}/x"), tmp_path / "x")])
        finally:
            await b.aclose()

    assert isinstance(result, TransferError)
    assert f"timed out after 0.5 s connecting to 127.0.0.1:{port}" in result.message
    assert result.retryable


async def test_a_host_key_not_in_known_hosts_is_refused(
    sshd: Sshd, sources: Path, tmp_path: Path,
) -> None:
    keygen(tmp_path / "other", "another host")
    other = (tmp_path / "other.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    b = SftpBackend(settings(sshd, sftp_known_hosts=str(known_hosts)))
    try:
        (result,) = await b.run([item(sshd, "in", sources / "tree" / "top.txt",
                                      tmp_path / "top.txt")])
    finally:
        await b.aclose()

    assert isinstance(result, TransferError)
    assert "host key" in result.message and "not trusted" in result.message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known_hosts}" in result.message
    assert not result.retryable
    assert not (tmp_path / "top.txt").exists()


async def test_a_key_the_server_does_not_know_is_refused(
    sshd: Sshd, sources: Path, tmp_path: Path,
) -> None:
    keygen(tmp_path / "stranger", "not authorised")
    b = SftpBackend(settings(sshd, sftp_identity=str(tmp_path / "stranger")))
    try:
        (result,) = await b.run([item(sshd, "in", sources / "tree" / "top.txt",
                                      tmp_path / "top.txt")])
    finally:
        await b.aclose()

    assert isinstance(result, TransferError)
    assert "refused the key" in result.message
    assert str(tmp_path / "stranger") in result.message
    assert not result.retryable


async def wait_for(check: Callable[[], bool], *, timeout: float = 30) -> None:
    """Poll ``check`` every millisecond until true; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            if check():
                return
            await anyio.sleep(0.001)


@pytest.mark.parametrize("direction", ["in", "out"])
async def test_a_cancelled_transfer_leaves_nothing_behind(
    sshd: Sshd, backend: SftpBackend, sources: Path, tmp_path: Path, direction: str,
) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    if direction == "in":
        it = item(sshd, "in", sources / "big.bin", local / "big.bin")
        final = local / "big.bin"
    else:
        it = item(sshd, "out", remote / "big.bin", sources / "big.bin")
        final = remote / "big.bin"
    done = False

    async with anyio.create_task_group() as tg:
        async def transfer() -> None:
            nonlocal done
            await backend.run([it])
            done = True

        tg.start_soon(transfer)
        await wait_for(lambda: bool(partials(local, remote)) or done)
        tg.cancel_scope.cancel()

    assert partials(local, remote) == []
    assert final.exists() == done  # cancelled: nothing in place (done: it won the race)
    # The kept connection still serves the next batch.
    assert await backend.run([it]) == [digest(sources / "big.bin")]


async def test_the_same_backend_reconnects_after_aclose(
    sshd: Sshd, backend: SftpBackend, sources: Path, tmp_path: Path,
) -> None:
    src = sources / "tree" / "top.txt"
    assert await backend.run([item(sshd, "in", src, tmp_path / "1")]) == [digest(src)]
    await backend.aclose()
    assert await backend.run([item(sshd, "in", src, tmp_path / "2")]) == [digest(src)]


def session_processes(sshd: Sshd) -> list[int]:
    """The per-connection sshd processes (children of the listener)."""
    children = Path(f"/proc/{sshd.pid}/task/{sshd.pid}/children").read_text()
    return [int(p) for p in children.split()]


async def test_a_dropped_connection_is_made_again(
    sshd: Sshd, backend: SftpBackend, sources: Path, tmp_path: Path,
) -> None:
    src = sources / "tree" / "top.txt"
    assert await backend.run([item(sshd, "in", src, tmp_path / "1")]) == [digest(src)]
    sessions = session_processes(sshd)
    assert sessions  # the backend keeps its connection between batches
    for pid in sessions:  # the server side goes away, as when sshd restarts
        os.kill(pid, signal.SIGTERM)
    await wait_for(lambda: not set(sessions) & set(session_processes(sshd)))

    (result,) = await backend.run([item(sshd, "in", src, tmp_path / "2")])
    if isinstance(result, TransferError):  # the loss noticed only by this batch: retryable
        assert result.retryable, result
        (result,) = await backend.run([item(sshd, "in", src, tmp_path / "2")])
    assert result == digest(src)


def test_the_sshd_helper_serves_scp_with_host_key_checking(sshd: Sshd, tmp_path: Path) -> None:
    """The helper's server and files work for OpenSSH's own client too (the benchmark's peer)."""
    (tmp_path / "a.txt").write_text("hello\n")
    subprocess.run(["scp", "-q", "-o", "BatchMode=yes", "-o",
                    f"UserKnownHostsFile={sshd.known_hosts}", "-i", str(sshd.identity), "-P",
                    str(sshd.port), f"{sshd.user}@{sshd.host}:{tmp_path / 'a.txt'}",
                    str(tmp_path / "b.txt")], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "b.txt").read_text() == "hello\n"
