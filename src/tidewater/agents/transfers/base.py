"""What every transfer backend shares: items, atomic placement, and (from
:mod:`tidewater.urls`) URLs and digests.

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

:class:`Remote`, :func:`parse_url`, :class:`Moved` and the digest and tree
functions live in :mod:`tidewater.urls`, shared with the controller and the
pilot; they are re-exported here for the backends.
"""

from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import TransferError
from ...urls import (
    CHUNK,
    SCHEMES,
    Moved,
    Remote,
    digest,
    file_digest,
    parse_url,
    tree_digest,
    tree_files,
    tree_walk,
)

__all__ = [
    "CHUNK",
    "SCHEMES",
    "Backend",
    "Direction",
    "Item",
    "Moved",
    "Remote",
    "digest",
    "discard",
    "discard_stale_partials",
    "file_digest",
    "parse_url",
    "partial_path",
    "place",
    "tree_digest",
    "tree_files",
    "tree_walk",
]

Direction = Literal["in", "out"]


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
