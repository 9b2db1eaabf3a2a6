"""Transfer URLs and content digests: what the controller, the agent and the pilot share.

:func:`parse_url` reads the URL of a task's input or output (``file://``,
``sftp://``, ``globus://``) into a :class:`Remote`; the controller uses it to
refuse a bad URL at submit, the agent's transfer backends to reach it.

:func:`digest` gives the size and SHA-256 of a file or of a directory tree
(:func:`tree_digest`), the same way wherever it is computed: by a backend
for what landed, by the pilot for an output too large to send inline. Trees
holding symbolic links, FIFOs, sockets or devices are refused
(:func:`tree_walk`).

The digest and tree functions read files and block: async code calls them
in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import TransferError

__all__ = [
    "CHUNK",
    "SCHEMES",
    "Moved",
    "Remote",
    "digest",
    "file_digest",
    "parse_url",
    "tree_digest",
    "tree_files",
    "tree_walk",
]

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
class Moved:
    """What landed: total bytes and SHA-256 (of the file, or :func:`digest` of a tree)."""

    size: int
    sha256: str


def file_digest(path: Path) -> Moved:
    """Size and SHA-256 of the file at ``path``, read in :data:`CHUNK` pieces; raises OSError."""
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
    """:func:`tree_files` of ``root``, and its directories (relative, parents first).

    Raises a non-retryable TransferError naming the first symbolic link, FIFO,
    socket or device found; OSError when a directory cannot be read.
    """
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
    """Size and SHA-256 of a file, or of a directory tree (:func:`tree_digest`).

    Raises TransferError for a tree :func:`tree_walk` refuses, OSError when
    something cannot be read.
    """
    if path.is_dir() and not path.is_symlink():
        return tree_digest([(rel, file_digest(p)) for rel, p in tree_files(path)])
    return file_digest(path)
