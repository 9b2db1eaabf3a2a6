"""Transfer backends, chosen by URL scheme: ``file://``, ``sftp://``, ``globus://``.

:class:`~.engine.Engine` batches items per (scheme, remote), bounds
concurrency, retries with backoff and reports per task. Each backend lives in
its own module and is imported only when a URL of its scheme is first seen
(``globus://`` needs the optional ``globus-sdk``: ``pip install tidewater[globus]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import TransferError
from .base import Backend, Item, Moved, Remote, parse_url

if TYPE_CHECKING:
    from ..settings import SiteSettings

__all__ = ["Backend", "Item", "Moved", "Remote", "TransferError", "make_backend", "parse_url"]


def make_backend(scheme: str, settings: SiteSettings) -> Backend:
    """A backend for ``scheme``, configured from the site's ``[transfers]`` settings."""
    if scheme == "file":
        from .file import FileBackend

        return FileBackend(settings)
    if scheme == "sftp":
        from .sftp import SftpBackend

        return SftpBackend(settings)
    if scheme == "globus":
        try:
            from .globus import GlobusBackend
        except ImportError as exc:  # globus-sdk is an optional extra
            raise TransferError("globus://", f"globus:// needs globus-sdk on the site: "
                                f"pip install 'tidewater-hpc[globus]' ({exc})",
                                retryable=False) from None
        return GlobusBackend(settings)
    raise TransferError(f"{scheme}://", f"unsupported scheme {scheme!r}", retryable=False)
