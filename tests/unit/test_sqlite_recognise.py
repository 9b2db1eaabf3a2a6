"""Recognising a SQLite file before opening it for writing: what is refused, and that it stays unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tidewater.controller.store.schema import SCHEMA_VERSION
from tidewater.controller.store.sqlite_migrations import migrate, recognise
from tidewater.errors import StoreCorrupt, StoreForeign, StoreRefused, StoreTooNew


def store(path: Path, version: int = SCHEMA_VERSION) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn, str(path))
    if version != SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    return path


def test_no_file_and_an_empty_file_are_new_stores(tmp_path: Path) -> None:
    assert recognise(str(tmp_path / "absent.db")) == 0
    (tmp_path / "empty.db").write_bytes(b"")
    assert recognise(str(tmp_path / "empty.db")) == 0
    assert recognise(":memory:") == 0


def test_a_store_is_recognised_with_its_version(tmp_path: Path) -> None:
    assert recognise(str(store(tmp_path / "tw.db"))) == SCHEMA_VERSION


@pytest.mark.parametrize(("make", "error", "words"), [
    ("garbage", StoreCorrupt, "file is not a database"),
    ("trashed", StoreCorrupt, "malformed"),
    ("foreign", StoreForeign, "holds other tables (invoices)"),
    ("numbered", StoreForeign, "holds other tables (invoices)"),
    ("newer", StoreTooNew, f"schema version {SCHEMA_VERSION + 1}, newer than this Tidewater's"),
])
def test_refused_files_are_left_as_they_were(
    tmp_path: Path, make: str, error: type[StoreRefused], words: str
) -> None:
    path = tmp_path / f"{make}.db"
    if make == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif make == "trashed":
        store(path)
        data = bytearray(path.read_bytes())
        data[100:] = b"\xa5" * (len(data) - 100)
        path.write_bytes(bytes(data))
    elif make in ("foreign", "numbered"):
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        if make == "numbered":  # someone else's use of user_version
            conn.execute("PRAGMA user_version = 3")
        conn.commit()
        conn.close()
    else:
        store(path, version=SCHEMA_VERSION + 1)
    before = path.read_bytes()
    with pytest.raises(error) as info:
        recognise(str(path))
    assert words in str(info.value)
    assert info.value.where == str(path)
    assert str(info.value).startswith(f"refusing store {path}: ")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
