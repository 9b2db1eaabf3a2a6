"""A task's files on the pilot: inline inputs written before the run, outputs read after.

Every path is confined to the task's work directory (:func:`tidewater.paths.confine`):
``..``, absolute paths and symbolic links that lead out are refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import proto as P
from ..errors import PathEscape, TransferError
from ..errors import TaskFileError as TaskFileError  # importers of taskfiles catch it
from ..paths import confine
from ..urls import digest


def write_inputs(wd: Path, inputs: list[tuple[str, bytes]]) -> None:
    """Write inline inputs into ``wd`` (each atomically: a rename of a complete file).

    Raises :class:`~tidewater.errors.TaskFileError` for an input whose path
    leads out of ``wd`` or that cannot be written.
    """
    for rel, data in inputs:
        try:
            dest = confine(wd, rel)
        except PathEscape as exc:
            raise TaskFileError(rel, str(exc), refused=True) from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tw-partial-{os.getpid()}-{dest.name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TaskFileError(rel, str(exc.strerror or exc)) from None


def collect_outputs(wd: Path, paths: list[str], limit: int) -> list[P.OutputFile]:
    """Each named output as found: its bytes when a regular file of at most ``limit``
    bytes, else its size (a directory's total) and SHA-256; ``size=None`` when it is
    missing or would lead outside ``wd`` (also through a link inside a directory)."""
    out: list[P.OutputFile] = []
    for rel in paths:
        try:
            p = confine(wd, rel)
        except PathEscape:
            out.append(P.OutputFile(path=rel))
            continue
        if p.is_file() and p.stat().st_size <= limit:
            data = p.read_bytes()
            out.append(P.OutputFile(path=rel, size=len(data), data=data,
                                    sha256=hashlib.sha256(data).hexdigest()))
        elif p.is_file() or p.is_dir():
            try:
                m = digest(p)
            except TransferError:  # a directory holding symbolic links
                out.append(P.OutputFile(path=rel))
                continue
            out.append(P.OutputFile(path=rel, size=m.size, sha256=m.sha256))
        else:
            out.append(P.OutputFile(path=rel))
    return out
