"""The real OpenSSH server of the sftp:// tests: :mod:`tidewater.examples.sshd`, which the
federation example uses too (re-exported here so the tests and bench read it as before)."""

from tidewater.examples.sshd import (
    HOW_TO,
    SSHD,
    Sshd,
    banner,
    free_port,
    keygen,
    start_sshd,
    stop,
)

__all__ = ["HOW_TO", "SSHD", "Sshd", "banner", "free_port", "keygen", "start_sshd", "stop"]
