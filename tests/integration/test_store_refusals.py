"""`tidewater server --db X` refuses a store it must not open, and leaves it as it was.

Each case runs the real command line: a file that is not a database, a SQLite
store with damaged pages, someone else's database, a store of a newer
Tidewater; on PostgreSQL a foreign database and a newer one. The controller
must exit non-zero with one line naming the store and what to do, and the
file (or database) must be byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from tidewater.controller.users import add_user

from . import pg
from .procs import PY, free_port

pytestmark = pytest.mark.integration


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def serve(db: str, tmp: Path) -> tuple[int, list[str]]:
    """Run `tidewater server --db db` until it exits; its status and stderr lines."""
    with anyio.fail_after(60):
        proc = await anyio.run_process(
            [PY, "-m", "tidewater", "server", "--db", db, "--port", str(free_port())],
            check=False, env={**os.environ, "TIDEWATER_HOME": str(tmp / "home")})
    return proc.returncode, [ln for ln in proc.stderr.decode().splitlines() if ln.strip()]


def garbage(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(16384))


def trash_after_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:] = random.Random(2).randbytes(len(data) - 100)
    path.write_bytes(bytes(data))
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"


async def damaged(path: Path) -> None:
    """A real store whose header is intact and whose pages after it are trashed."""
    await add_user(str(path), "alice")
    trash_after_header(path)


def foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE invoices (id INTEGER, total REAL);"
                       "INSERT INTO invoices VALUES (1, 9.5);")
    conn.close()


async def newer(path: Path) -> None:
    await add_user(str(path), "alice")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


CASES: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "garbage": (garbage, ["not a SQLite database or is damaged", "restore it from a backup"]),
    "damaged": (damaged, ["not a SQLite database or is damaged", ".recover"]),
    "foreign": (foreign, ["not a Tidewater store", "invoices", "new file or an empty database"]),
    "newer": (newer, ["schema version 99, newer than this Tidewater's", "upgrade Tidewater"]),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    db = tmp_path / "stores" / f"{case}.db"
    db.parent.mkdir()
    made = make(db)
    if made is not None:
        await made  # type: ignore[misc]
    before = digest(db)
    rc, lines = await serve(str(db), tmp_path)
    assert rc != 0
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"error: refusing store {db}: ")
    for w in words:
        assert w in line
    assert digest(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]  # no -wal, no -shm


def pg_state(url: str) -> list[tuple[object, ...]]:
    """Every table of the database, its columns, and every row of the ones the tests make."""
    shape = pg.rows(url, "SELECT table_name, column_name, data_type FROM information_schema.columns "
                         "WHERE table_schema = current_schema() ORDER BY 1, 2")
    names = {str(r[0]) for r in shape}
    content: list[tuple[object, ...]] = []
    for t in ("invoices", "tidewater_schema"):
        if t in names:
            content += pg.rows(url, f"SELECT * FROM {t} ORDER BY 1")
    return shape + content


@pytest.mark.postgres
async def test_foreign_postgres_database_is_refused_and_left_unchanged(
    tmp_path: Path, postgres_url: str
) -> None:
    pg.rows(postgres_url, "CREATE TABLE invoices (id BIGINT, total DOUBLE PRECISION)")
    pg.rows(postgres_url, "INSERT INTO invoices VALUES (1, 9.5) RETURNING id")
    before = pg_state(postgres_url)
    rc, lines = await serve(postgres_url, tmp_path)
    assert rc != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: refusing store {postgres_url}: it is not a Tidewater "
                               "store: it holds other tables (invoices)")
    assert "give --db a new file or an empty database" in lines[0]
    assert pg_state(postgres_url) == before


@pytest.mark.postgres
async def test_newer_postgres_store_is_refused_and_left_unchanged(
    tmp_path: Path, postgres_url: str
) -> None:
    await add_user(postgres_url, "alice")
    pg.rows(postgres_url, "INSERT INTO tidewater_schema (version, applied_at) VALUES (99, 0) "
                          "RETURNING version")
    before = pg_state(postgres_url)
    rc, lines = await serve(postgres_url, tmp_path)
    assert rc != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: refusing store {postgres_url}: it has schema version 99")
    assert "upgrade Tidewater" in lines[0]
    assert pg_state(postgres_url) == before
