"""Which backend a ``--db`` value names."""

from __future__ import annotations

from ...errors import ConfigError
from .base import Store
from .postgres import PostgresStore
from .sqlite import SqliteStore


def open_store(url: str, *, queue_size: int = 1000) -> Store:
    """The store a ``--db`` value names: ``postgresql://…``, ``sqlite:///path``, or a path.

    Not opened yet (use it as an async context manager). Raises
    :class:`~tidewater.errors.ConfigError` for a scheme Tidewater has no backend for.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, queue_size=queue_size)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")  # sqlite:///var/tw.db is /var/tw.db
    elif "://" in url:
        raise ConfigError(f"unknown store {url!r}: use a path, sqlite:///path or "
                          "postgresql://user@host/db")
    else:
        path = url
    return SqliteStore(path or ":memory:", queue_size=queue_size)
