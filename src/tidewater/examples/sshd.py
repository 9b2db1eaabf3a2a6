"""A real OpenSSH server on a free loopback port: the sftp:// tests, the transfer benchmark
and the federation example serve their data directories with it.

:func:`start_sshd` writes everything the server needs into a directory of its
own (host key, client key, ``authorized_keys``, ``sshd_config``, ``known_hosts``)
and runs ``/usr/sbin/sshd -D -e -f CONFIG`` as the current user: key
authentication only, SFTP by ``internal-sftp``. Host-key checking stays on:
``known_hosts`` holds the generated host key as ``[127.0.0.1]:PORT``.

Readiness is the SSH banner read from the port under a deadline, never a
fixed sleep. The server is stopped by its pid (SIGTERM, then SIGKILL after a
bounded wait). Standard library only, so ``bench/transfers.py`` can use it.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOW_TO = ("install OpenSSH's server with `sudo scripts/services.sh install` "
          "(apt-get install openssh-server openssh-sftp-server)")
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Sshd:
    """A running test sshd and what a client needs to reach it."""

    host: str
    port: int
    user: str
    identity: Path
    """The client's private key (ed25519, no passphrase), authorised for ``user``."""
    known_hosts: Path
    """Holds this server's host key as ``[host]:port``."""
    directory: Path
    pid: int

    def url(self, path: str | Path) -> str:
        """``sftp://user@host:port/abs/path`` for an absolute ``path``."""
        p = str(path)
        if not p.startswith("/"):
            raise ValueError(f"{p!r} is not an absolute path")
        return f"sftp://{self.user}@{self.host}:{self.port}{p}"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> None:
    """An ed25519 key pair at ``path`` and ``path.pub``, without passphrase."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True, timeout=30)


def render_config(d: Path, port: int) -> str:
    return "\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {d / 'host_ed25519'}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "Subsystem sftp internal-sftp",
        "LogLevel INFO",
        "",
    ])


def banner(port: int, deadline: float) -> bool:
    """True once something on ``port`` greets with an SSH banner."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc`` (by pid), SIGKILL if it has not exited after a bounded wait."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _launch(d: Path, port: int) -> subprocess.Popen[bytes] | None:
    """Start sshd on ``port``; None if the port was taken meanwhile (the caller tries another)."""
    cfg = d / "sshd_config"
    cfg.write_text(render_config(d, port))
    log = d / "sshd.log"
    with open(log, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            if b"Address already in use" in log.read_bytes()[start:]:
                return None
            raise RuntimeError(f"sshd exited with status {proc.returncode} on start; "
                               f"{log}:\n{_tail(log)}")
        if banner(port, deadline):
            return proc
        if time.monotonic() >= deadline:
            stop(proc)
            raise RuntimeError(f"sshd did not answer on 127.0.0.1:{port} within "
                               f"{START_TIMEOUT:g} s; {log}:\n{_tail(log)}")
        time.sleep(0.02)  # polling under the deadline above


@contextmanager
def start_sshd(directory: Path) -> Iterator[Sshd]:
    """Run a test sshd with its keys and config in ``directory``; stop it on exit.

    Raises FileNotFoundError (with how to install it) when there is no
    ``/usr/sbin/sshd``, RuntimeError with the log's tail when it does not start.
    """
    if not os.access(SSHD, os.X_OK):
        raise FileNotFoundError(f"{SSHD} not found: {HOW_TO}")
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege-separation directory.
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        PRIVSEP_DIR.chmod(0o755)
    keygen(d / "host_ed25519", "tidewater-test-host")
    keygen(d / "client_ed25519", "tidewater-test-client")
    (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
    host_key = (d / "host_ed25519.pub").read_text().split()
    for _ in range(5):
        port = free_port()
        proc = _launch(d, port)
        if proc is not None:
            break
    else:
        raise RuntimeError(f"sshd found no free loopback port; see {d / 'sshd.log'}")
    known_hosts = d / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    try:
        yield Sshd(host="127.0.0.1", port=port, user=getpass.getuser(),
                   identity=d / "client_ed25519", known_hosts=known_hosts, directory=d,
                   pid=proc.pid)
    finally:
        stop(proc)
