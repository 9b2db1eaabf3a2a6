"""Transfer throughput: the ``file`` backend beside ``cp``, ``sftp`` beside ``scp``, in one run.

    .venv/bin/python bench/transfers.py [--repeats 5] [--size-mb 256] [--files 200]
                                        [--file-kib 256] [--no-disk]

Data sets, made once per data root: one file of ``--size-mb`` MB of random
bytes, and a tree of ``--files`` files of ``--file-kib`` KiB in 10
directories (plus an empty one). Data roots: tmpfs (``/dev/shm``) and disk
(a directory under ``/var/tmp``; page cache warm and no fsync, like ``cp``
and ``scp``: this measures the filesystem's write path, not the device).

Each repetition runs every case once, in turn, on the same data:

* ``file`` backend, checksum on and off, vs ``cp`` (``cp -r`` for the tree);
* ``sftp`` backend to a real ``sshd`` on loopback (``tests/integration/sshd.py``),
  inputs (remote -> local) and outputs (local -> remote), checksum on and off
  on a connection kept between runs (as the site agent keeps it), and checksum
  on with a new connection per run (as ``scp`` makes one), vs
  ``scp -q -o BatchMode=yes -o UserKnownHostsFile=... -i KEY -P PORT`` with
  OpenSSH's default cipher (OpenSSH 9 ``scp`` speaks SFTP to the server).

MB/s is 10^6 bytes per second of wall time, from the call (or process
start) to its return, destination removed between runs (untimed). Figures
are the median and [min-max] over the repetitions; the ratio is ours/peer
of the medians. Target: sftp >= 0.8x scp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import Spread, machine_line, median, table  # noqa: E402
from tests.integration.sshd import Sshd, start_sshd  # noqa: E402

from tidewater.agents.settings import SiteSection, SiteSettings, TransfersSection  # noqa: E402
from tidewater.agents.transfers.base import Backend, Item, Moved, parse_url  # noqa: E402
from tidewater.agents.transfers.file import FileBackend  # noqa: E402
from tidewater.agents.transfers.sftp import SftpBackend  # noqa: E402
from tidewater.errors import TransferError  # noqa: E402

TARGET = 0.8
MB = 1e6


def make_data(root: Path, size_mb: int, files: int, kib: int) -> tuple[Path, Path]:
    src = root / "src"
    (src / "tree" / "empty").mkdir(parents=True)
    with open(src / "big.bin", "wb") as f:
        left = size_mb * 1_000_000
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n
    for i in range(files):
        d = src / "tree" / f"d{i % 10:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(os.urandom(kib * 1024))
    return src / "big.bin", src / "tree"


def size_of(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def settings(sshd: Sshd, checksum: bool) -> SiteSettings:
    return SiteSettings(site=SiteSection(name="bench"), transfers=TransfersSection(
        checksum=checksum, sftp_identity=str(sshd.identity),
        sftp_known_hosts=str(sshd.known_hosts)))


async def run_backend(backend: Backend, item: Item) -> None:
    (result,) = await backend.run([item])
    if isinstance(result, TransferError):
        raise RuntimeError(f"transfer failed: {result}")
    assert isinstance(result, Moved)


async def run_cmd(argv: list[str]) -> None:
    r = await anyio.run_process(argv, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode()}")


async def clear(p: Path) -> None:
    def rm() -> None:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    await anyio.to_thread.run_sync(rm)


Case = tuple[str, str, Callable[[], Awaitable[None]], Path]  # group, label, run, dest


def cases(sshd: Sshd, backends: dict[str, Backend], src: Path, root: Path) -> list[Case]:
    """Every case for one source (file or tree) in one data root."""
    name = src.name
    dst, up = root / "dst" / name, root / "up" / name
    scp = ["scp", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}",
           "-i", str(sshd.identity), "-P", str(sshd.port)]
    rflag = ["-r"] if src.is_dir() else []
    remote_src = f"{sshd.user}@{sshd.host}:{src}"
    remote_up = f"{sshd.user}@{sshd.host}:{up}"
    get = Item("in", parse_url(sshd.url(src)), dst)
    put = Item("out", parse_url(sshd.url(up)), src)
    copy = Item("in", parse_url(src.as_uri()), dst)

    async def cold(item: Item) -> None:
        b = SftpBackend(settings(sshd, True))
        try:
            await run_backend(b, item)
        finally:
            await b.aclose()

    return [
        ("copy", "file backend, checksum on", lambda: run_backend(backends["file+"], copy), dst),
        ("copy", "file backend, checksum off", lambda: run_backend(backends["file-"], copy), dst),
        ("copy", "cp", lambda: run_cmd(["cp", *rflag, str(src), str(dst)]), dst),
        ("in", "sftp, checksum on", lambda: run_backend(backends["sftp+"], get), dst),
        ("in", "sftp, checksum off", lambda: run_backend(backends["sftp-"], get), dst),
        ("in", "sftp, checksum on, new connection", lambda: cold(get), dst),
        ("in", "scp", lambda: run_cmd([*scp, *rflag, remote_src, str(dst)]), dst),
        ("out", "sftp, checksum on", lambda: run_backend(backends["sftp+"], put), up),
        ("out", "sftp, checksum off", lambda: run_backend(backends["sftp-"], put), up),
        ("out", "sftp, checksum on, new connection", lambda: cold(put), up),
        ("out", "scp", lambda: run_cmd([*scp, *rflag, str(src), remote_up]), up),
    ]


async def measure(sshd: Sshd, root: Path, args: argparse.Namespace) -> list[list[object]]:
    big, tree = await anyio.to_thread.run_sync(make_data, root, args.size_mb, args.files,
                                               args.file_kib)
    (root / "dst").mkdir()
    (root / "up").mkdir()
    backends: dict[str, Backend] = {
        "file+": FileBackend(settings(sshd, True)), "file-": FileBackend(settings(sshd, False)),
        "sftp+": SftpBackend(settings(sshd, True)), "sftp-": SftpBackend(settings(sshd, False)),
    }
    rows: list[list[object]] = []
    try:
        for src, what in ((big, f"{args.size_mb} MB file"),
                          (tree, f"tree {args.files} x {args.file_kib} KiB")):
            size = await anyio.to_thread.run_sync(size_of, src)
            todo = cases(sshd, backends, src, root)
            rates: dict[str, list[float]] = {f"{g}|{label}": [] for g, label, _, _ in todo}
            for rep in range(args.repeats + 1):  # the first round warms up, untimed
                for group, label, fn, dest in todo:
                    await clear(dest)
                    t0 = time.perf_counter()
                    await fn()
                    dt = time.perf_counter() - t0
                    got = await anyio.to_thread.run_sync(size_of, dest)
                    if got != size:
                        raise RuntimeError(f"{label}: {got} bytes landed of {size}")
                    if rep:
                        rates[f"{group}|{label}"].append(size / MB / dt)
                await clear(root / "dst" / src.name)
                await clear(root / "up" / src.name)
            peers = {"copy": "cp", "in": "scp", "out": "scp"}
            for group, label, _, _ in todo:
                r = rates[f"{group}|{label}"]
                peer = peers[group]
                if label == peer:
                    ratio = ""
                else:
                    ratio = f"{median(r) / median(rates[f'{group}|{peer}']):.2f}"
                direction = {"copy": "copy", "in": "in (remote->local)",
                             "out": "out (local->remote)"}[group]
                rows.append([what, direction, label, Spread.of(r).fmt(0), ratio])
    finally:
        for b in backends.values():
            await b.aclose()
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", "-r", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--file-kib", type=int, default=256)
    ap.add_argument("--disk", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure on disk (/var/tmp)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    ssh_version = (await anyio.run_process(["ssh", "-V"])).stderr.decode().strip()
    roots = [("tmpfs", "/dev/shm")] + ([("disk", "/var/tmp")] if args.disk else [])
    with tempfile.TemporaryDirectory(prefix="tw-bench-sshd-") as d, start_sshd(Path(d)) as sshd:
        print(f"sshd on {sshd.host}:{sshd.port} ({ssh_version}); "
              f"{args.repeats} runs per case after one warm-up round", flush=True)
        for kind, base in roots:
            with tempfile.TemporaryDirectory(prefix="tw-bench-", dir=base) as r:
                rows = await measure(sshd, Path(r), args)
            print()
            print(table(f"{kind} ({base}): MB/s, median [min-max] of {args.repeats} runs; "
                        "ratio = ours / peer (cp or scp) of the medians",
                        ["data", "direction", "how", "MB/s", "ratio"], rows), flush=True)
    print(f"\ntarget: sftp >= {TARGET}x scp on the same files")


if __name__ == "__main__":
    anyio.run(main)
