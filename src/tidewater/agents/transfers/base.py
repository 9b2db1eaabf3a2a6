"""What every transfer backend shares: URLs, items, digests, atomic placement.

A backend moves a batch of :class:`Item` that share one scheme and one remote
(``sftp://alice@host:22``, ``globus://ENDPOINT``, ``file://``). For each item
it returns a :class:`Moved` (size and SHA-256 of what landed) or a
:class:`~tidewater.errors.TransferError` carrying its own message.

The contract every backend keeps:

* **Nothing partial is ever in place.** Inputs are written to
  :func:`partial_path` beside the destination and renamed into place only
  once complete and verified (:func:`place`); a directory counts as arrived
  only when all of it has. Outputs written to a remote go to a partial name
  there and are renamed when complete, where the remote allows it.
* **Sizes are verified**: the bytes that landed equal the size the source
  reported. The SHA-256 of what landed is computed and returned; the engine
  compares it with the item's expected digest when the user gave one.
* Items of a batch are independent: one failing does not fail the others.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from ...errors import TransferError

Direction = Literal["in", "out"]
SCHEMES = ("file", "sftp", "globus")
CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Remote:
    """A parsed transfer URL.

    ``file:///data/x`` → scheme file, path /data/x;
    ``sftp://alice@host:2222/data/x`` → user alice, host, port 2222, path /data/x;
    ``globus://ENDPOINT-UUID/~/data/x`` → host is the endpoint id, path /~/data/x.
    """

    url: str
    scheme: str
    path: str
    host: str = ""
    user: str = ""
    port: int | None = None

    @property
    def key(self) -> str:
        """Items with the same key go to the backend in one batch (one connection)."""
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{who}{self.host}{port}"


def parse_url(url: str) -> Remote:
    """Parse a transfer URL; raises a non-retryable TransferError saying what is wrong."""
    if not isinstance(url, str) or not url or any(c in url for c in "\0\r\n"):
        raise TransferError(str(url)[:200], "not a valid URL", retryable=False)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TransferError(url, f"unsupported scheme {parts.scheme!r}: use one of "
                            + ", ".join(f"{s}://" for s in SCHEMES), retryable=False)
    if parts.query or parts.fragment:
        raise TransferError(url, "query strings and fragments are not allowed", retryable=False)
    path = unquote(parts.path)
    if not path or path == "/":
        raise TransferError(url, "the URL names no path", retryable=False)
    try:
        port = parts.port
    except ValueError:
        raise TransferError(url, "the port is not a number in 1-65535", retryable=False) from None
    host = parts.hostname or ""
    if scheme == "file":
        if host not in ("", "localhost"):
            raise TransferError(url, "file:// URLs are local: write file:///path", retryable=False)
        if not path.startswith("/"):
            raise TransferError(url, "file:// paths are absolute", retryable=False)
        return Remote(url=url, scheme=scheme, path=path)
    if not host:
        raise TransferError(url, f"{scheme}:// URLs need a host", retryable=False)
    if scheme == "globus":
        # Endpoint ids are UUIDs; keep their case (urlsplit lowercases hostname).
        host = parts.netloc.rsplit("@", 1)[-1]
    return Remote(url=url, scheme=scheme, path=path, host=host,
                  user=unquote(parts.username or ""), port=port)


@dataclass(frozen=True)
class Item:
    """One file or directory to move.

    ``direction`` "in": from ``remote`` to ``local`` (the final destination on
    the site); "out": from ``local`` (on the site) to ``remote``. ``local`` is
    absolute and already confined to the task's work directory.
    """

    direction: Direction
    remote: Remote
    local: Path
    sha256: str = ""  # expected digest, when the user gave one


@dataclass(frozen=True)
class Moved:
    """What landed: total bytes and SHA-256 (of the file, or :func:`digest` of a tree)."""

    size: int
    sha256: str


class Backend(ABC):
    """One kind of transfer. Instances are made per engine and reused across batches."""

    scheme: str = ""

    @abstractmethod
    async def run(self, items: Sequence[Item]) -> list[Moved | TransferError]:
        """Move every item of one batch (same scheme and remote); one result per item."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections kept between batches."""


# ---------------------------------------------------------------------- helpers


def partial_path(final: Path) -> Path:
    """A fresh hidden sibling of ``final`` to write into before :func:`place`."""
    return final.with_name(f".tw-partial-{uuid.uuid4().hex[:8]}-{final.name}")


def discard_stale_partials(final: Path) -> int:
    """Remove partials of ``final`` left by an attempt that died (an agent killed
    mid-transfer); returns how many. Only this agent writes them, one stage at a time."""
    n = 0
    try:
        stale = list(final.parent.glob(f".tw-partial-????????-{final.name}"))
    except OSError:
        return 0
    for p in stale:
        discard(p)
        n += 1
    return n


def place(partial: Path, final: Path) -> None:
    """Put a complete ``partial`` at ``final`` in one rename (replacing what was there)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir() and not final.is_symlink():
        old = partial_path(final)
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)


def discard(path: Path) -> None:
    """Remove a partial file or tree, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def file_digest(path: Path) -> Moved:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return Moved(size, h.hexdigest())


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative posix path, path), sorted.

    Symbolic links are refused: a tree must not reach outside itself; so are
    FIFOs, sockets and devices (reading one would block or never end).
    """
    return tree_walk(root)[0]


def tree_walk(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """:func:`tree_files` of ``root``, and its directories (relative, parents first)."""
    files: list[tuple[str, Path]] = []
    dirs: list[str] = []
    todo = [("", str(root))]
    while todo:
        rel, path = todo.pop()
        with os.scandir(path) as it:
            for e in it:
                sub = f"{rel}/{e.name}" if rel else e.name
                if e.is_symlink():
                    raise TransferError(str(root), f"{sub} is a symbolic link; trees with "
                                        "links are not transferred", retryable=False)
                if e.is_dir():
                    dirs.append(sub)
                    todo.append((sub, e.path))
                elif e.is_file():
                    files.append((sub, Path(e.path)))
                else:
                    raise TransferError(str(root), f"{sub} is not a regular file or directory; "
                                        "such trees are not transferred", retryable=False)
    files.sort()
    dirs.sort()
    return files, dirs


def tree_digest(entries: Sequence[tuple[str, Moved]]) -> Moved:
    """The digest of a directory: SHA-256 over sorted ``path NUL size NUL sha256`` lines."""
    h = hashlib.sha256()
    total = 0
    for rel, m in sorted(entries):
        h.update(f"{rel}\0{m.size}\0{m.sha256}\n".encode())
        total += m.size
    return Moved(total, h.hexdigest())


def digest(path: Path) -> Moved:
    """Size and SHA-256 of a file, or of a directory tree (:func:`tree_digest`)."""
    if path.is_dir() and not path.is_symlink():
        return tree_digest([(rel, file_digest(p)) for rel, p in tree_files(path)])
    return file_digest(path)
