"""The command line's help: complete short lines, -h everywhere, --version."""

from __future__ import annotations

from importlib.metadata import version

import click
from click.testing import CliRunner

from tidewater.cli import main


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, cmd in group.commands.items():
        found.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, f"{prefix}{name} ")
    return found


def test_every_short_help_is_a_whole_sentence() -> None:
    cut = {name: cmd.get_short_help_str(limit=45) for name, cmd in _commands(main)
           if cmd.get_short_help_str(limit=45).endswith("...")
           or not cmd.get_short_help_str(limit=45)}
    assert cut == {}


def test_dash_h_everywhere_and_global_options_after_the_command() -> None:
    runner = CliRunner()
    for name, cmd in _commands(main):
        r = runner.invoke(main, [*name.split(), "-h"], prog_name="tidewater")
        assert r.exit_code == 0 and "Usage: tidewater" in r.output, (name, r.output, r.exception)
        if not isinstance(cmd, click.Group) and name not in ("login",):
            taken = {o for p in cmd.params for o in p.opts}
            assert {"--url", "--token", "--ca-file", "--profile", "-v"} <= taken, name


def test_version() -> None:
    r = CliRunner().invoke(main, ["--version"], prog_name="tidewater")
    assert r.exit_code == 0 and r.output.strip() == f"tidewater {version('tidewater-hpc')}"


def test_completion_as_docs_cli_md_shows_it() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    # The installed script: completion keys on the program's name.
    tidewater = str(Path(sys.executable).with_name("tidewater"))

    env = {**os.environ, "_TIDEWATER_COMPLETE": "bash_complete",
           "COMP_WORDS": "tidewater server --log-format ", "COMP_CWORD": "3"}
    r = subprocess.run([tidewater], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.split() == ["plain,text", "plain,json"]
    env = {**os.environ, "_TIDEWATER_COMPLETE": "bash_source"}
    r = subprocess.run([tidewater], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert "complete -o nosort -F _tidewater_completion tidewater" in r.stdout


def test_every_error_class_has_its_exit_code() -> None:
    from tidewater import errors as E
    from tidewater.cli_base import Exit, exit_code
    from tidewater.durations import DurationError

    assert exit_code(E.NotFound("no task 3")) == Exit.NOT_FOUND == 3
    assert exit_code(E.from_code("not_found", "x")) == Exit.NOT_FOUND
    assert exit_code(E.AuthError("invalid token")) == Exit.REFUSED == 4
    assert exit_code(E.InvalidRequest("only an admin", "forbidden")) == Exit.REFUSED
    assert exit_code(E.ConnectionBroken("refused")) == Exit.UNREACHABLE == 5
    assert exit_code(E.TLSError("wss://x", "not verified")) == Exit.UNREACHABLE
    assert exit_code(TimeoutError()) == Exit.UNREACHABLE
    assert exit_code(DurationError("soon")) == Exit.USAGE == 2
    assert exit_code(E.ConfigError("bad")) == Exit.USAGE
    assert exit_code(E.AppError("bad template")) == Exit.FAILED == 1
    assert exit_code(E.TaskFailed(1, "FAILED", 3, "")) == Exit.FAILED
