"""Staging over SFTP end to end, against a real OpenSSH server on loopback.

The controller, the site's agent and a pilot in a local batch job; the
instrument's data sits behind a real ``sshd`` (generated keys, host key
checked). A 50 MB input and a directory tree are staged in, a task
transforms them, and its outputs are staged back over SFTP.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tidewater.urls import digest

from .sshd import Sshd, free_port
from .test_data import data_site

pytestmark = [pytest.mark.integration, pytest.mark.sshd, pytest.mark.usefixtures("store")]

TRANSFORM = (
    "set -e; mkdir -p out/tree; "
    # The big input, byte for byte reversed in 1 MB blocks: a real transformation
    "python3 -c \"import sys; d=open('big.bin','rb').read(); "
    "open('out/big.rev','wb').write(b''.join(d[i:i+1048576][::-1] "
    "for i in range(0, len(d), 1048576)))\"; "
    "for f in $(cd tree && find . -type f | sort); do "
    "mkdir -p out/tree/$(dirname $f); tr a-z A-Z < tree/$f > out/tree/$f; done"
)


def keys(sshd: Sshd) -> dict[str, object]:
    """The site's [transfers] settings for the test sshd (host key checked)."""
    return {"sftp_identity": str(sshd.identity), "sftp_known_hosts": str(sshd.known_hosts)}


def reversed_blocks(data: bytes) -> bytes:
    return b"".join(data[i:i + 1048576][::-1] for i in range(0, len(data), 1048576))


async def test_fifty_megabytes_and_a_tree_in_and_out_over_sftp(
    tmp_path: Path, sshd: Sshd,
) -> None:
    remote = tmp_path / "beamline"
    (remote / "tree" / "a" / "b").mkdir(parents=True)
    big = os.urandom(50 * 1000 * 1000)
    (remote / "big.bin").write_bytes(big)
    tree = {"tree/readme.txt": b"frames of run 42\n", "tree/a/x.txt": b"alpha\n",
            "tree/a/b/y.txt": b"beta " * 10_000}
    for rel, data in tree.items():
        (remote / rel).write_bytes(data)
    async with data_site(tmp_path, **keys(sshd)) as (_c, client, _work):
        t = await client.submit(
            "sh", site="lab", params={"script": TRANSFORM},
            inputs={"big.bin": sshd.url(remote / "big.bin"), "tree": sshd.url(remote / "tree")},
            outputs={"out/big.rev": sshd.url(remote / "results" / "big.rev"),
                     "out/tree": sshd.url(remote / "results" / "tree")})
        info = await t.result(timeout=120)
        assert info.state == "JOB_FINISHED", info

    back = (remote / "results" / "big.rev").read_bytes()
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(reversed_blocks(big)).hexdigest()
    for rel, data in tree.items():
        assert (remote / "results" / rel).read_bytes() == data.upper()
    files = {(f.direction, f.path): f for f in info.files}
    assert files["in", "big.bin"].sha256 == hashlib.sha256(big).hexdigest()
    assert files["in", "big.bin"].size == len(big)
    assert files["in", "tree"].sha256 == digest(remote / "tree").sha256
    assert files["out", "out/big.rev"].sha256 == hashlib.sha256(back).hexdigest()
    assert files["out", "out/tree"].sha256 == digest(remote / "results" / "tree").sha256
    assert not [p for p in remote.rglob("*") if p.name.startswith(".tw-partial-")]


async def test_a_refused_connection_retries_then_fails_the_task_promptly(
    tmp_path: Path, sshd: Sshd,
) -> None:
    closed = free_port()
    async with data_site(tmp_path, batch_job=False, **keys(sshd)) as (_c, client, _work):
        url = f"sftp://{sshd.user}@127.0.0.1:{closed}/data/frame.raw"
        missing = sshd.url(tmp_path / "not-there.raw")
        t1 = await client.submit("sh", site="lab", params={"script": "true"},
                                 inputs={"frame.raw": url})
        t2 = await client.submit("sh", site="lab", params={"script": "true"},
                                 inputs={"frame.raw": missing})
        refused, absent = await client.wait([t1, t2], timeout=60)
    assert refused.state == "FAILED"
    assert f"connection refused by 127.0.0.1:{closed}" in refused.error
    assert "after 3 attempts" in refused.error
    assert absent.state == "FAILED"
    assert "not-there.raw: No such file" in absent.error and "after 3 attempts" in absent.error
