"""The sftp backend's streaming and error mapping, over a fake remote file (no SSH).

The real server is in tests/integration/test_sftp_backend.py; here the
reassembly of parallel, possibly short, reads and the size checks are driven
through files that change under the reader.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tidewater.agents.transfers.base import Moved, parse_url
from tidewater.agents.transfers.sftp import (
    _download,
    _LocalReader,
    _LocalWriter,
    _translate,
    _upload,
)

BLOCK = 1000


class FakeRemoteFile:
    """Serves ``data`` like SFTPClientFile.read/write with explicit offsets; a read
    returns at most ``short`` bytes (servers may answer short), b"" at end of file."""

    def __init__(self, data: bytes = b"", short: int = 0) -> None:
        self.data = bytearray(data)
        self.short = short
        self.requests = 0

    async def read(self, size: int, offset: int) -> bytes:
        self.requests += 1
        n = min(size, self.short) if self.short else size
        return bytes(self.data[offset:offset + n])

    async def write(self, data: bytes, offset: int) -> int:
        self.requests += 1
        end = offset + len(data)
        if len(self.data) < end:
            self.data.extend(b"\0" * (end - len(self.data)))
        self.data[offset:end] = data
        return len(data)


async def download(tmp_path: Path, data: bytes, size: int, **kw: Any) -> tuple[int, Path, Moved | None]:
    dst = tmp_path / "dst"
    sink = _LocalWriter(dst, checksum=True)
    got = await _download(FakeRemoteFile(data, **kw), size, BLOCK, sink)  # type: ignore[arg-type]
    assert sink.file is None  # closed by the last write
    return got, dst, sink.moved


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 37 * BLOCK, 100_003])
async def test_a_file_arrives_whole_in_order_with_its_digest(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    got, dst, moved = await download(tmp_path, data, size)
    assert got == size
    assert dst.read_bytes() == data
    assert moved == Moved(size, hashlib.sha256(data).hexdigest())


async def test_short_reads_are_completed(tmp_path: Path) -> None:
    data = os.urandom(10 * BLOCK + 7)
    got, dst, _ = await download(tmp_path, data, len(data), short=333)
    assert got == len(data)
    assert dst.read_bytes() == data


async def test_a_file_that_grew_since_its_stat_is_seen(tmp_path: Path) -> None:
    data = os.urandom(5 * BLOCK)
    got, _, _ = await download(tmp_path, data + b"more", len(data))
    assert got > len(data)


async def test_a_file_that_grew_by_exactly_blocks_is_seen(tmp_path: Path) -> None:
    data = os.urandom(5 * BLOCK)
    got, _, _ = await download(tmp_path, data + os.urandom(BLOCK), len(data))
    assert got > len(data)


async def test_a_file_that_shrank_since_its_stat_is_seen(tmp_path: Path) -> None:
    data = os.urandom(5 * BLOCK)
    got, _, _ = await download(tmp_path, data[:2500], len(data))
    assert got == 2500


async def test_a_small_file_costs_one_read(tmp_path: Path) -> None:
    f = FakeRemoteFile(b"hello")
    await _download(f, 5, BLOCK, _LocalWriter(tmp_path / "x", checksum=False))  # type: ignore[arg-type]
    assert f.requests == 1  # the read past the end also proves the size


@pytest.mark.parametrize("size", [0, 5, 3 * 1024 * 1024 + 17])
async def test_upload_sends_every_byte_and_hashes_them(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    remote = FakeRemoteFile()
    source = _LocalReader(tmp_path / "src", checksum=True)

    sent = await _upload(remote, source, 64 * 1024)  # type: ignore[arg-type]

    assert sent == source.before == source.after == size
    assert bytes(remote.data) == data
    assert source.hexdigest() == hashlib.sha256(data).hexdigest()
    assert source.file is None


def test_sftp_errors_become_messages_naming_the_path() -> None:
    remote = parse_url("sftp://alice@hpc.example.org/data/run1/x.h5")
    missing = _translate(asyncssh.SFTPNoSuchFile("No such file"), remote, "/data/run1/x.h5")
    assert missing.url == remote.url
    assert "/data/run1/x.h5: No such file or directory on hpc.example.org" in missing.message
    assert missing.retryable

    denied = _translate(asyncssh.SFTPPermissionDenied("Permission denied"), remote, "/data")
    assert "/data: Permission denied" in denied.message and not denied.retryable

    lost = _translate(asyncssh.ConnectionLost("Connection lost"), remote, "/data/run1/x.h5")
    assert "connection to hpc.example.org was lost" in lost.message and lost.retryable

    full = _translate(OSError(28, "No space left on device", "/work/t1/x.h5"), remote, "/d")
    assert full.message.startswith("/work/t1/x.h5: No space left on device") and full.retryable
