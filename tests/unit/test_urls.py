"""Transfer URLs and digests, shared by the controller, the agent and the pilot."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tidewater import urls
from tidewater.agents.transfers import base
from tidewater.errors import TransferError
from tidewater.urls import Moved, digest, parse_url


def test_parse_url() -> None:
    r = parse_url("sftp://alice@dtn.example:2222/data/x%20y")
    assert (r.scheme, r.user, r.host, r.port, r.path) == ("sftp", "alice", "dtn.example", 2222,
                                                          "/data/x y")
    assert r.key == "sftp://alice@dtn.example:2222"
    g = parse_url("globus://6C54CADE-bde5/~/cal/dark.h5")
    assert (g.host, g.path, g.key) == ("6C54CADE-bde5", "/~/cal/dark.h5", "globus://6C54CADE-bde5")
    assert parse_url("file:///x").key == "file://"
    for bad in ("", "file:relative", "sftp://h/x?q=1", "sftp://h:99999/x", "s3://b/k", "sftp://h"):
        with pytest.raises(TransferError):
            parse_url(bad)


def test_a_files_digest_is_its_size_and_sha256(tmp_path: Path) -> None:
    data = b"x" * (urls.CHUNK + 3)  # more than one read
    (tmp_path / "f").write_bytes(data)
    assert digest(tmp_path / "f") == Moved(len(data), hashlib.sha256(data).hexdigest())


def test_a_trees_digest_covers_names_sizes_and_contents(tmp_path: Path) -> None:
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "a").write_bytes(b"aa")
    (tmp_path / "t" / "sub" / "b").write_bytes(b"b")
    lines = "".join(f"{rel}\0{len(d)}\0{hashlib.sha256(d).hexdigest()}\n"
                    for rel, d in [("a", b"aa"), ("sub/b", b"b")])
    assert digest(tmp_path / "t") == Moved(3, hashlib.sha256(lines.encode()).hexdigest())
    (tmp_path / "t" / "sub" / "b").rename(tmp_path / "t" / "sub" / "c")
    assert digest(tmp_path / "t").sha256 != hashlib.sha256(lines.encode()).hexdigest()


def test_a_tree_holding_a_link_has_no_digest(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "out").symlink_to(tmp_path)
    with pytest.raises(TransferError, match="out is a symbolic link") as info:
        digest(tmp_path / "t")
    assert not info.value.retryable


def test_the_agents_transfer_base_still_offers_them() -> None:
    for name in ("Remote", "parse_url", "Moved", "digest", "file_digest", "tree_digest",
                 "tree_files", "tree_walk", "SCHEMES", "CHUNK"):
        assert getattr(base, name) is getattr(urls, name)
