"""Inputs, outputs and dependencies from the command line, end to end.

A real controller, a local site with its agent and a running batch job, and
the real ``tidewater`` command: ``submit --input/--output/--parent``,
``download``, ``show`` listing a task's files, ``app add`` with hooks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import pytest

import tidewater

from .procs import PY, Cluster, cluster
from .test_data import data_site

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

CliResult = tuple[int, str, str]
# A task that waits until the test opens its gate (a FIFO), so its children are
# seen waiting for it without racing it.
GATED = "read go < {gate}; "


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flat(text: str) -> str:
    """Error messages wrap at the terminal's width: compare them as one line."""
    return " ".join(text.split())


def table(text: str) -> dict[str, list[str]]:
    """A printed table's rows by their second cell; cells wrapped over lines joined again."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line[:1] not in ("│", "┃", "|"):
            continue
        cells = [c.strip() for c in line.replace("│", "|").replace("┃", "|").strip("|").split("|")]
        if cells[0]:
            rows.append(cells)
        elif rows:  # the continuation of a row whose cells wrapped
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    return {r[1]: r for r in rows}


async def tw(c: Cluster, token: str, *args: str, cwd: Path | None = None,
             check: bool = True) -> CliResult:
    """``tidewater ARGS`` against the cluster: exit code, stdout, stderr."""
    with anyio.fail_after(90):
        r = await anyio.run_process([PY, "-m", "tidewater", *args], cwd=cwd, check=False,
                                    env={**c.env, "TIDEWATER_TOKEN": token})
    out, err = r.stdout.decode(), r.stderr.decode()
    if check and r.returncode != 0:
        raise AssertionError(f"tidewater {' '.join(args)} -> {r.returncode}\n{out}\n{err}")
    return r.returncode, out, err


async def test_submit_with_inputs_and_outputs_then_download_them(tmp_path: Path) -> None:
    frame = os.urandom(1024 * 1024)  # exactly the largest file sent inline
    (tmp_path / "local.bin").write_bytes(frame)
    ref = tmp_path / "instrument" / "ref.dat"
    ref.parent.mkdir()
    ref.write_bytes(b"reference\n" * 100)
    dest = tmp_path / "dest"
    # A small summary (inline), 2 MB kept on the site, and a copy of it sent to a URL.
    script = ("set -e; sha256sum frame ref > out.txt; "
              "head -c 2000000 /dev/urandom > big; cp big big.bin")
    async with data_site(tmp_path) as (c, client, work):
        _, out, err = await tw(
            c, client.token, "submit", "--site", "lab", "sh", f"script={script}",
            "--input", "frame=@local.bin", "--input", f"ref={ref.as_uri()}",
            "--output", "out.txt", "--output", "big",
            "--output", f"big.bin={(dest / 'big.bin').as_uri()}", "--wait", cwd=tmp_path)
        assert "JOB_FINISHED" in out, out + err
        (info,) = await client.tasks()
        assert info.state == "JOB_FINISHED"
        files = {(f.direction, f.path): f for f in info.files}
        assert files["in", "frame"].state == "inline" and files["in", "frame"].size == len(frame)
        assert files["in", "ref"].state == "done"
        assert files["out", "out.txt"].state == "inline"
        assert files["out", "big"].state == "on_site"
        assert files["out", "big.bin"].state == "done"

        # The output sent to a URL is there, and the task saw the inputs' bytes.
        sent = (dest / "big.bin").read_bytes()
        assert len(sent) == 2_000_000
        assert sent == (work / f"tasks/{info.id}/big").read_bytes()

        # `download` into the current directory: the 2 MB output kept on the site.
        got = tmp_path / "got"
        got.mkdir()
        _, out, _ = await tw(c, client.token, "download", str(info.id), "big", cwd=got)
        assert out.split() == ["big", "2000000", "bytes"]
        assert (got / "big").read_bytes() == sent
        # ... and to a named file: the small one held by the controller.
        _, out, _ = await tw(c, client.token, "download", str(info.id), "out.txt",
                             str(got / "summary.txt"))
        assert out.split()[0] == str(got / "summary.txt")
        summary = {line.split()[1]: line.split()[0]
                   for line in (got / "summary.txt").read_text().splitlines()}
        assert summary == {"frame": sha(frame), "ref": sha(ref.read_bytes())}
        assert sorted(os.listdir(got)) == ["big", "summary.txt"]  # nothing partial left

        # `show` lists the files: where each came from or went, state, size, digest.
        _, out, _ = await tw(c, client.token, "show", str(info.id))
        rows = table(out)
        assert rows["path"] == ["dir", "path", "state", "size", "url / source", "sha256", "error"]
        assert rows["frame"] == ["in", "frame", "inline", str(len(frame)), "inline",
                                 sha(frame)[:12], ""]
        assert rows["ref"] == ["in", "ref", "done", "1000", ref.as_uri(),
                               sha(ref.read_bytes())[:12], ""]
        assert rows["out.txt"][:5] == ["out", "out.txt", "inline", "142", "-"]
        assert rows["big"][:5] == ["out", "big", "on_site", "2000000", "-"]
        assert rows["big.bin"] == ["out", "big.bin", "done", "2000000",
                                   (dest / "big.bin").as_uri(), sha(sent)[:12], ""]
        assert f"task {info.id} JOB_FINISHED" in out  # what it showed before files existed

        # An output the task does not have: the controller's words, and a failure.
        code, out, err = await tw(c, client.token, "download", str(info.id), "nope",
                                  cwd=got, check=False)
        assert code == 3 and out == ""  # not found
        assert (f"task {info.id} has no output 'nope' (outputs: 'out.txt', 'big', 'big.bin')"
                in flat(err))
        assert sorted(os.listdir(got)) == ["big", "summary.txt"]


async def test_parents_and_references_to_their_outputs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    parent_script = GATED.format(gate=gate) + (
        "echo calibrated > cal.txt; head -c 2000000 /dev/urandom > big")
    async with data_site(tmp_path) as (c, client, _work):
        token = client.token
        _, out, _ = await tw(c, token, "submit", "--site", "lab", "sh",
                             f"script={parent_script}", "--output", "cal.txt", "--output", "big")
        parent = int(out)
        _, out, _ = await tw(
            c, token, "submit", "--site", "lab", "sh",
            "script=cat cal.txt > seen; sha256sum big | cut -c1-64 >> seen",
            "--input", f"cal.txt=task:{parent}:cal.txt", "--input", f"big=task:{parent}:big",
            "--output", "seen")
        child = int(out)
        _, out, _ = await tw(c, token, "submit", "--site", "lab", "sh", "script=true",
                             "--parent", str(parent), "--parent", str(child))
        last = int(out)

        # The parent cannot finish before the gate opens: both wait for it.
        p, ch, la = await client.tasks(ids=[parent, child, last])
        assert p.state not in ("JOB_FINISHED", "FAILED", "KILLED")
        assert (ch.state, la.state) == ("AWAITING_PARENTS", "AWAITING_PARENTS")
        # An output of a task that has not finished cannot be downloaded yet.
        code, _, err = await tw(c, token, "download", str(parent), "cal.txt", str(tmp_path),
                                check=False)
        assert code == 1 and f"output 'cal.txt' of task {parent} is not there" in flat(err)
        assert not (tmp_path / "cal.txt").exists()
        _, out, _ = await tw(c, token, "show", str(child))
        assert f"task:{parent}:cal.txt" in out and f"task:{parent}:big" in out

        # Opened read-write, the FIFO takes the line now and keeps it for the parent.
        fd = os.open(gate, os.O_RDWR)
        try:
            os.write(fd, b"go\n")
            _, out, _ = await tw(c, token, "show", str(last), "--wait")
            assert f"task {last} JOB_FINISHED" in out
        finally:
            os.close(fd)

        p, ch, la = await client.tasks(ids=[parent, child, last])
        assert [t.state for t in (p, ch, la)] == ["JOB_FINISHED"] * 3
        assert ch.started_at and p.finished_at and ch.started_at >= p.finished_at
        assert la.started_at and ch.finished_at and la.started_at >= ch.finished_at
        await tw(c, token, "download", str(parent), "big", str(tmp_path))
        await tw(c, token, "download", str(child), "seen", str(tmp_path))
        big = (tmp_path / "big").read_bytes()
        assert len(big) == 2_000_000
        assert (tmp_path / "seen").read_text().split() == ["calibrated", sha(big)]


async def test_bad_inputs_outputs_and_parents_are_usage_errors_and_create_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "small.bin").write_bytes(b"x" * 10)
    (tmp_path / "large.bin").write_bytes(b"x" * (1024 * 1024 + 1))
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            await client.add_site("lab")
            await client.add_app("lab", "sh", "sh -c {script}")
            bad = {
                ("--input", "frame"): "must look like PATH=SOURCE",
                ("--input", "=@small.bin"): "must look like PATH=SOURCE",
                ("--input", "frame=@missing.bin"): "cannot read 'missing.bin'",
                ("--input", "frame=@large.bin"): "give it a url instead",
                ("--input", "frame=http://example.org/f"): "unsupported scheme 'http'",
                ("--input", "frame=/abs/frame.raw"): "is not a source",
                ("--input", "frame=file://host/frame.raw"): "file:// URLs are local",
                ("--input", "frame=task:abc:out"): "must look like task:ID:OUTPUT",
                ("--input", "frame=task:5"): "must look like task:ID:OUTPUT",
                ("--output", "=file:///tmp/x"): "must look like PATH or PATH=URL",
                ("--output", "out.txt="): "give a url after '='",
                ("--output", "out.txt=ftp://host/x"): "unsupported scheme 'ftp'",
                ("--parent", "abc"): "'abc' is not a valid integer",
                ("--parent", "0"): "0 is not a task id",
            }
            for (option, value), words in bad.items():
                code, out, err = await tw(c, token, "submit", "--site", "lab", "sh",
                                          "script=true", option, value, cwd=tmp_path,
                                          check=False)
                assert code == 2, (option, value, err)
                assert f"Invalid value for '{option}'" in err and words in flat(err), err
                assert out == ""
            assert await client.tasks() == []
            # The same command with good values submits one task.
            _, out, _ = await tw(c, token, "submit", "--site", "lab", "sh", "script=true",
                                 "--input", "frame=@small.bin", cwd=tmp_path)
            assert [t.id for t in await client.tasks()] == [int(out)]


async def test_app_add_with_hooks_then_app_ls_shows_them(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            await client.add_site("lab")
            await client.add_app("lab", "plain", "echo {x}")
        _, _, err = await tw(c, token, "app", "add", "--site", "lab", "hooked", "sh -c {script}",
                             "--preprocess", "tests.hookapps:pre",
                             "--postprocess", "tests.hookapps:post",
                             "--on-error", "tests.hookapps:give_up")
        assert "preprocess=tests.hookapps:pre" in flat(err)
        code, _, err = await tw(c, token, "app", "add", "--site", "lab", "broken", "true",
                                "--on-timeout", "not a path", check=False)
        assert code == 2 and "Invalid value for '--on-timeout'" in err

        _, out, _ = await tw(c, token, "app", "ls")
        assert "hooks" in out
        assert "preprocess=tests.hookapps:pre" in out
        assert "postprocess=tests.hookapps:post" in out
        assert "on_error=tests.hookapps:give_up" in out
        assert "on_timeout" not in out and "broken" not in out
        async with tidewater.connect(c.url, token=token) as client:
            hooks = {a.name: a.hooks for a in await client.apps("lab")}
        assert hooks == {"plain": None, "hooked": tidewater.proto.AppHooks(
            preprocess="tests.hookapps:pre", postprocess="tests.hookapps:post",
            on_error="tests.hookapps:give_up")}
