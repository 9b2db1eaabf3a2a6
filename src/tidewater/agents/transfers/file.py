"""``file://``: copy (or hard-link) on the filesystems the site's login node sees.

Copies run in worker threads, at most ``max_concurrency`` at once. The
kernel copies (``copy_file_range``/``sendfile``, like ``cp``) and sizes are
checked; with ``checksum`` on, the source is hashed at the same time in a
second thread. With ``file_link`` on, a file input on the same
filesystem as its destination is hard-linked instead (nothing is copied; the
task must not modify it).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ...errors import TransferError
from .base import (
    CHUNK,
    Backend,
    Item,
    Moved,
    discard,
    file_digest,
    partial_path,
    place,
    tree_digest,
    tree_walk,
)

if TYPE_CHECKING:
    from ..settings import SiteSettings


def _hash_file(src: Path, out: list[str]) -> None:
    out.append(file_digest(src).sha256)


def _kernel_copy(fi: int, fo: int, size: int) -> int:
    """Copy ``fi`` to ``fo`` in the kernel (copy_file_range, else sendfile); bytes copied."""
    done = 0
    try:
        while done < size or size == 0:
            n = os.copy_file_range(fi, fo, max(size - done, CHUNK))
            if n == 0:
                break
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while n := os.sendfile(fo, fi, done, max(size - done, CHUNK)):
            done += n
    return done


def copy_file(src: Path, dst: Path, *, checksum: bool) -> Moved:
    """Copy one regular file; its size is checked against the source's before and after.

    The kernel copies (``copy_file_range``, like ``cp``); with ``checksum``, a
    second thread hashes the source at the same time (SHA-256 is the slower
    of the two, so this costs about the hashing alone).
    """
    hashed: list[str] = []
    fi = os.open(src, os.O_RDONLY)
    try:
        before = os.fstat(fi).st_size
        hasher = threading.Thread(target=_hash_file, args=(src, hashed), daemon=True)
        if checksum and before > CHUNK:
            hasher.start()
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size = _kernel_copy(fi, fo, before)
        finally:
            os.close(fo)
        if checksum and before > CHUNK:
            hasher.join()
        elif checksum:
            _hash_file(src, hashed)
        after = os.fstat(fi).st_size
    finally:
        os.close(fi)
    digest = hashed[0] if hashed else ""
    if not size == before == after:
        raise TransferError(src.as_uri(), f"size changed while copying: {before} bytes before, "
                            f"{size} copied, {after} after")
    return Moved(size, digest)


def copy_any(src: Path, dst: Path, *, checksum: bool, link: bool = False) -> Moved:
    """Copy a file or a directory tree from ``src`` to a fresh ``dst``."""
    if src.is_dir():
        dst.mkdir(parents=True)
        files, dirs = tree_walk(src)
        for d in dirs:  # parents first; empty directories travel too
            os.mkdir(dst / d)
        entries = [(rel, copy_file(p, dst / rel, checksum=checksum)) for rel, p in files]
        return tree_digest(entries) if checksum else Moved(sum(m.size for _, m in entries), "")
    if not src.is_file():
        raise TransferError(src.as_uri(), "not a regular file or directory")
    if link:
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        else:
            return file_digest(dst) if checksum else Moved(dst.stat().st_size, "")
    return copy_file(src, dst, checksum=checksum)


class FileBackend(Backend):
    scheme = "file"

    def __init__(self, settings: SiteSettings) -> None:
        t = settings.transfers
        self.checksum = t.checksum
        self.link = t.file_link
        self.limiter = anyio.CapacityLimiter(max(1, t.max_concurrency))

    async def run(self, items: Sequence[Item]) -> list[Moved | TransferError]:
        results: list[Moved | TransferError] = [TransferError("", "not run")] * len(items)

        async def one(i: int, item: Item) -> None:
            try:
                results[i] = await anyio.to_thread.run_sync(self._move, item,
                                                             limiter=self.limiter)
            except TransferError as exc:
                results[i] = exc
            except OSError as exc:
                results[i] = TransferError(item.remote.url, _os_message(exc))

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(one, i, item)
        return results

    def _move(self, item: Item) -> Moved:
        remote = Path(item.remote.path)
        if item.direction == "in":
            src, final, link = remote, item.local, self.link
        else:
            src, final, link = item.local, remote, False
        if not src.exists():
            raise TransferError(item.remote.url, f"{src}: no such file or directory")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(final)
        try:
            moved = copy_any(src, tmp, checksum=self.checksum, link=link)
            place(tmp, final)
        except BaseException:
            discard(tmp)
            raise
        return moved


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
