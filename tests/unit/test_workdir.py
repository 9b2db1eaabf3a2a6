"""Task work directories: relative to the site's work root, never escaping it."""

from __future__ import annotations

import errno
import os

import pytest

from tidewater.controller.validate import check_workdir
from tidewater.errors import InvalidRequest


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a", "a"),
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("a/./b/.", "a/b"),
        ("run 1/out", "run 1/out"),
        ("a/~b", "a/~b"),
        ("a..b/c..", "a..b/c.."),
        ("...", "..."),
        (".hidden/x", ".hidden/x"),
    ],
)
def test_accepts_and_normalises(given: str, expected: str) -> None:
    assert check_workdir(given) == expected


def test_normalised_form_is_stable() -> None:
    once = check_workdir("./x//y/./z/")
    assert check_workdir(once) == once


@pytest.mark.parametrize(
    "bad",
    [
        "/abs",
        "/",
        "//server/share",
        "~",
        "~/x",
        "~root/x",
        "..",
        "../x",
        "a/..",
        "a/../b",
        "a/b/../../..",
        "./..",
        "",
        ".",
        "./",
        "//",
        "a\x00b",
        "\x00",
        "x" * 1025,
    ],
)
def test_rejects(bad: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_workdir(bad)
    assert info.value.code == "bad_request"
    assert info.value.message  # speaks to the user


def test_error_names_the_input() -> None:
    with pytest.raises(InvalidRequest, match="/etc"):
        check_workdir("/etc")
    with pytest.raises(InvalidRequest, match=r"\.\."):
        check_workdir("a/../../etc")


def test_long_but_allowed() -> None:
    path = "/".join(["d"] * 512)[:1024]
    assert check_workdir(path) == path


@pytest.mark.parametrize(("err", "fault"), [
    (errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EROFS, True), (errno.EIO, True),
    (errno.ENOENT, False), (errno.EACCES, False), (errno.ENOEXEC, False),
])
def test_only_a_failing_work_filesystem_is_the_pilots_fault(err: int, fault: bool) -> None:
    """A missing or non-executable command is the task's problem; a full, read-only or
    failing filesystem is the node's, and the pilot must stop taking work."""
    from tidewater.pilot.runner import storage_fault

    assert storage_fault(OSError(err, os.strerror(err))) is fault
    assert not storage_fault(ValueError("not an OSError"))
