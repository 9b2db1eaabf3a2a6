"""Inputs and outputs as the controller checks them at submit, and references resolved."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tidewater import proto as P
from tidewater.controller.staging import needs_agent, resolve
from tidewater.controller.validate import check_files
from tidewater.errors import InvalidRequest, LimitExceeded
from tidewater.paths import PathEscape, check_relpath, confine


def spec(**kw: object) -> P.TaskSpec:
    return P.TaskSpec(app="a", site="s", **kw)  # type: ignore[arg-type]


def test_a_task_without_files_has_none() -> None:
    assert check_files(spec(), 100) == (None, None, [])


def test_each_kind_of_input_and_output() -> None:
    files, data, refs = check_files(spec(
        inputs=[P.Input(path="./a//b", url="sftp://u@h/x"), P.Input(path="c", data=b"hi"),
                P.Input(path="d", task=7, output="out/x")],
        outputs=[P.Output(path="r"), P.Output(path="s", url="file:///dest/s")]), 100)
    assert files is not None
    assert [(f.direction, f.path, f.state) for f in files] == [
        ("in", "a/b", "pending"), ("in", "c", "inline"), ("in", "d", "pending"),
        ("out", "r", "pending"), ("out", "s", "pending")]
    assert files[1].sha256 == hashlib.sha256(b"hi").hexdigest() and files[1].size == 2
    assert data == {"c": b"hi"} and refs == [7]
    assert needs_agent(files, "in") and needs_agent(files, "out")
    assert not needs_agent([files[1], files[3]], "in")
    assert not needs_agent([files[1], files[3]], "out")  # no url: the pilot brings it back


@pytest.mark.parametrize(("inputs", "outputs", "message"), [
    ([P.Input(path="../../etc/passwd", data=b"")], [], "'..'"),
    ([P.Input(path="/etc/passwd", url="file:///x")], [], "relative"),
    ([], [P.Output(path="~/x")], "relative"),
    ([], [P.Output(path=".")], "empty"),
    ([P.Input(path="a", url="file:///x"), P.Input(path="a", data=b"")], [], "twice"),
    ([P.Input(path="a")], [], "exactly one"),
    ([P.Input(path="a", url="file:///x", data=b"1")], [], "exactly one"),
    ([P.Input(path="a", task=3)], [], "both task and output"),
    ([P.Input(path="a", url="http://h/x")], [], "unsupported scheme"),
    ([P.Input(path="a", url="sftp:///x")], [], "need a host"),
    ([P.Input(path="a", url="file://remote/x")], [], "local"),
    ([P.Input(path="a", url="file:///x", sha256="abc")], [], "64 hexadecimal"),
    ([P.Input(path="a", data=b"1", sha256="0" * 64)], [], "does not have the SHA-256"),
    ([], [P.Output(path="r", url="ftp://h/r")], "unsupported scheme"),
    ([], [P.Output(path=".tw-partial-x")], "reserved"),
])
def test_bad_files_are_refused_with_the_reason(
    inputs: list[P.Input], outputs: list[P.Output], message: str,
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_files(spec(inputs=inputs, outputs=outputs), 100)


def test_inline_inputs_count_together_against_the_limit() -> None:
    check_files(spec(inputs=[P.Input(path="a", data=b"x" * 60),
                             P.Input(path="b", data=b"x" * 40)]), 100)
    with pytest.raises(LimitExceeded, match="101 bytes of inline inputs"):
        check_files(spec(inputs=[P.Input(path="a", data=b"x" * 60),
                                 P.Input(path="b", data=b"x" * 41)]), 100)


def test_references_resolve_to_the_parents_url_bytes_or_place_on_the_site() -> None:
    ref = P.FileInfo(direction="in", path="in", task=5, output="o")
    with_url = [P.FileInfo(direction="out", path="o", url="sftp://u@h/o", state="done",
                           sha256="ab" * 32)]
    f, data = resolve(ref, with_url, None, parent_site=1, site=2, parent_workdir="tasks/5")
    assert (f.url, f.expect_sha256, data) == ("sftp://u@h/o", "ab" * 32, None)
    inline = [P.FileInfo(direction="out", path="o", state="inline", sha256="cd" * 32)]
    f, data = resolve(ref, inline, b"xyz", parent_site=1, site=2, parent_workdir="tasks/5")
    assert (f.state, f.size, data) == ("inline", 3, b"xyz")
    kept = [P.FileInfo(direction="out", path="o", state="on_site", size=10)]
    f, data = resolve(ref, kept, None, parent_site=1, site=1, parent_workdir="runs/a")
    assert (f.site_path, f.state, data) == ("runs/a/o", "pending", None)
    with pytest.raises(InvalidRequest, match="stays on its own site"):
        resolve(ref, kept, None, parent_site=1, site=2, parent_workdir="runs/a")
    with pytest.raises(InvalidRequest, match="has no output 'o'"):
        resolve(ref, [], None, parent_site=1, site=1, parent_workdir="x")


def test_check_relpath_normalises() -> None:
    assert check_relpath("a/./b//c/", "p") == "a/b/c"
    for bad in ("", "/", "..", "a/../b", "/abs", "~", "a\x00b"):
        with pytest.raises(InvalidRequest):
            check_relpath(bad, "p")


def test_confine_follows_links(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "w" / "inside").mkdir()
    (tmp_path / "w" / "esc").symlink_to(tmp_path / "out")
    (tmp_path / "w" / "ok").symlink_to(tmp_path / "w" / "inside")
    assert confine(tmp_path / "w", "ok/f") == tmp_path / "w" / "inside" / "f"
    for bad in ("esc/f", "../out/f", "/etc/passwd", ".", "a/../.."):
        with pytest.raises(PathEscape):
            confine(tmp_path / "w", bad)

