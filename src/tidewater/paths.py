"""Paths a user names inside a site's work root: checked where they are named and where used.

:func:`check_relpath` is lexical (the controller uses it at submit: no
absolute paths, no ``..``, no NUL, normalised). :func:`confine` is for the
site (agent and pilot) that is about to write or read: it resolves symbolic
links and refuses anything that ends up outside the base directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidRequest
from .errors import PathEscape as PathEscape  # importers of tidewater.paths catch it


def check_relpath(path: str, what: str) -> str:
    """A relative path, normalised; InvalidRequest naming ``what`` if it is absolute or has ``..``."""
    if not isinstance(path, str) or "\x00" in path or len(path) > 1024:
        raise InvalidRequest(f"invalid {what} {str(path)[:100]!r}")
    if path.startswith(("/", "~", "\\")) or os.path.isabs(path):
        raise InvalidRequest(f"{what} {path!r} must be relative (to the task's work directory)")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InvalidRequest(f"{what} {path!r} may not be empty or contain '..'")
    if any(p.startswith(".tw-partial-") for p in parts):
        raise InvalidRequest(f"{what} {path!r}: names starting .tw-partial- are reserved")
    return "/".join(parts)


def confine(base: Path, rel: str) -> Path:
    """``base / rel`` with symbolic links resolved.

    ``base`` itself is resolved first, so a base reached through a link is
    fine; a link *inside* it pointing out is not. Raises
    :class:`~tidewater.errors.PathEscape` (also a ValueError) unless the
    result stays under ``base``.
    """
    root = base.resolve()
    if "\x00" in rel or os.path.isabs(rel):
        raise PathEscape(rel, root, "is not a relative path")
    path = (root / rel).resolve()
    if path == root or root not in path.parents:
        raise PathEscape(rel, root)
    return path
