"""``tidewater example federation`` without sshd stops with how to get it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tidewater.cli import main
from tidewater.examples import sshd


def test_federation_without_sshd_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(sshd, "SSHD", "/nonexistent/sshd")
    r = CliRunner().invoke(main, ["example", "federation", "--tasks", "3",
                                  "--keep", str(tmp_path)])
    assert r.exit_code == 1
    assert "/nonexistent/sshd not found" in r.output
    assert "scripts/services.sh install" in r.output


def test_federation_help_names_what_it_needs() -> None:
    r = CliRunner().invoke(main, ["example", "federation", "--help"])
    assert r.exit_code == 0
    assert "openssh-server" in r.output and "xpcs" in r.output
