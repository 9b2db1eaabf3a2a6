"""scripts/reference.py writes a reference page for every command and every public name.

The committed docs/reference/*.md are regenerated whenever commands or API land,
so these tests check what the generator produces from the code as it is now,
never that the committed files match.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

import tidewater
from tidewater.cli import main as cli_main

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reference.py"


def _run(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)


def _every_command(cmd: click.Command, path: tuple[str, ...] = ()) -> list[str]:
    names = [" ".join(("tidewater", *path))]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            names += _every_command(sub, (*path, name))
    return names


def test_cli_page_has_every_command_with_its_usage_and_options(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "cli.md").read_text()
    commands = _every_command(cli_main)
    assert len(commands) > 30  # the tree was walked, not just the top group
    for full in commands:
        assert f"\n## {full}\n" in text, f"no section for `{full}`"
        assert f"```\n{full} " in text, f"no usage line for `{full}`"
    # Options appear with their names, defaults and environment variables.
    assert "`--drain-timeout` FLOAT RANGE" in text
    assert "`ws://127.0.0.1:8765`" in text
    assert "TIDEWATER_URL" in text


def test_api_page_has_every_public_name_with_signature_and_docstring(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "api.md").read_text()
    for name in tidewater.__all__:
        assert f"\n### {name}\n" in text, f"no section for tidewater.{name}"
    # Signatures as written in the source, docstrings, and field docstrings of structs.
    assert "`async submit(app: str, *, site: str | Sequence[str]" in text
    assert "Submit one task; returns once the controller has stored it." in text
    assert "| `wall_time` | `float | None` | `None` | Estimated run time in seconds" \
        .replace("float | None", "float \\| None") in text
    assert "Members: `CREATED`, `AWAITING_PARENTS`" in text
    # The state table, from tidewater.states itself.
    assert "| `RUNNING` | `RUN_DONE`, `RUN_ERROR`, `RUN_TIMEOUT`, `KILLED` |" in text
    assert "| `JOB_FINISHED` | (final) |" in text
    assert " at 0x" not in text


def test_output_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert _run(first).returncode == 0
    assert _run(second).returncode == 0
    for name in ("cli.md", "api.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_an_output_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = _run(blocker / "reference")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert not (blocker / "reference").exists()
