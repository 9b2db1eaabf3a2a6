"""The chaos suite's fixtures: the seed, the report table, network namespaces and small
filesystems.

Run it alone with ``pytest -m chaos`` (or ``pytest tests/chaos``); it prints a
table of what each scenario injected and measured at the end of the run. Every
random choice comes from ``TIDEWATER_CHAOS_SEED`` (printed in the header and
the table; random when unset), so a failing run is replayed with that seed.

Partitions need root and ``ip netns``; the full filesystem needs root to mount
a tmpfs. Without them those tests skip with a reason, except under
TIDEWATER_REQUIRE_SERVICES=1, where tests/conftest.py turns the skip into a
failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The store fixtures of the integration tests: ``store`` runs a test on SQLite and on
# PostgreSQL (the private cluster of scripts/services.sh).
from ..integration.conftest import postgres_cluster, postgres_url, store
from .report import Row, table

__all__ = ["postgres_cluster", "postgres_url", "store"]

HOW_TO_ROOT = ("run the chaos suite as root (scripts/test.sh does) on Linux with iproute2's "
               "`ip netns`")
_SEED = int(os.environ.get("TIDEWATER_CHAOS_SEED") or secrets.randbelow(2**31))
_ROWS: list[Row] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root and `ip netns` (network namespaces)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"chaos seed: {_SEED} (replay with TIDEWATER_CHAOS_SEED={_SEED})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ROWS:
        return
    terminalreporter.section("chaos report")
    for line in table(_ROWS).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"replay: TIDEWATER_CHAOS_SEED={_SEED} pytest tests/chaos")


@pytest.fixture(scope="session")
def chaos_seed() -> int:
    """The run's seed; each scenario derives its own random stream from it and its name."""
    return _SEED


@pytest.fixture(scope="session")
def chaos_report() -> list[Row]:
    """Append a :class:`~tests.chaos.report.Row` per scenario; printed at the end of the run."""
    return _ROWS


# --------------------------------------------------------------------------- root tools


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)


def _must(*argv: str) -> None:
    r = _run(*argv)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root: {HOW_TO_ROOT}")


@dataclass(frozen=True)
class Netns:
    """A network namespace joined to this host by a veth pair; ``cut`` and ``heal`` the link.

    The host end is ``host_ip`` (where the controller is reached from inside), the
    namespace end ``ns_ip``. Processes started under ``prefix`` live in the namespace.
    """

    name: str
    host_if: str
    host_ip: str
    ns_ip: str
    outer: str = ""
    """The namespace the link's other end is in ("": this host's own)."""

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def _ip(self) -> list[str]:
        return ["ip", "-n", self.outer] if self.outer else ["ip"]

    def cut(self) -> None:
        _must(*self._ip(), "link", "set", self.host_if, "down")

    def heal(self) -> None:
        _must(*self._ip(), "link", "set", self.host_if, "up")


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace ``tw-<random>`` with a /30 link to the host; removed afterwards,
    with every process still in it killed (even when the test failed)."""
    _need_root("a network partition")
    if shutil.which("ip") is None:
        pytest.skip(f"iproute2's `ip` is not on PATH: {HOW_TO_ROOT}")
    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"tw-{tag}", f"twh{tag}", f"twn{tag}"
    third, fourth = secrets.randbelow(256), 4 * secrets.randbelow(64)
    host_ip, ns_ip = f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"
    r = _run("ip", "netns", "add", name)
    if r.returncode != 0:
        pytest.skip(f"`ip netns add` failed ({r.stderr.strip()}): {HOW_TO_ROOT}")
    try:
        _must("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _must("ip", "link", "set", ns_if, "netns", name)
        _must("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _must("ip", "link", "set", host_if, "up")
        _must("ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _must("ip", "-n", name, "link", "set", ns_if, "up")
        _must("ip", "-n", name, "link", "set", "lo", "up")
        yield Netns(name, host_if, host_ip, ns_ip)
    finally:
        pids = _run("ip", "netns", "pids", name).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "link", "del", host_if)  # takes its peer with it
        _run("ip", "netns", "del", name)


@pytest.fixture
def inner_netns(netns: Netns) -> Iterator[Netns]:
    """A namespace behind ``netns``: its only link goes to ``netns`` (``host_ip`` is the
    address there), with no route beyond, so from inside it nothing but ``netns`` can be
    reached, the host included. Removed afterwards, every process in it killed."""
    tag = secrets.token_hex(3)
    name, outer_if, ns_if = f"tw-{tag}", f"two{tag}", f"twi{tag}"
    third, fourth = secrets.randbelow(256), 4 * secrets.randbelow(64)
    outer_ip, ns_ip = f"10.214.{third}.{fourth + 1}", f"10.214.{third}.{fourth + 2}"
    r = _run("ip", "netns", "add", name)
    if r.returncode != 0:
        pytest.skip(f"`ip netns add` failed ({r.stderr.strip()}): {HOW_TO_ROOT}")
    try:
        _must("ip", "link", "add", outer_if, "type", "veth", "peer", "name", ns_if)
        _must("ip", "link", "set", outer_if, "netns", netns.name)
        _must("ip", "link", "set", ns_if, "netns", name)
        _must("ip", "-n", netns.name, "addr", "add", f"{outer_ip}/30", "dev", outer_if)
        _must("ip", "-n", netns.name, "link", "set", outer_if, "up")
        _must("ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _must("ip", "-n", name, "link", "set", ns_if, "up")
        _must("ip", "-n", name, "link", "set", "lo", "up")
        yield Netns(name, outer_if, outer_ip, ns_ip, outer=netns.name)
    finally:
        for pid in _run("ip", "netns", "pids", name).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "del", name)  # its veth goes with it, and the peer with that


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with few inodes, filled to the last block and inode; unmounted afterwards."""
    _need_root("a full filesystem (a tmpfs mount)")
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = _run("mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=32", "tmpfs", str(mnt))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip()}): {HOW_TO_ROOT}")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 65536) > 0:
                pass
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)
        n = 0
        while True:
            try:
                (mnt / f"inode{n}").touch()
            except OSError:
                break
            n += 1
        yield mnt
    finally:
        r = _run("umount", str(mnt))
        if r.returncode != 0:
            _run("umount", "-l", str(mnt))
