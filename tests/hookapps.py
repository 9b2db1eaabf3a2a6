"""Hooks for the data tests, imported by pilots' warm workers as ``tests.hookapps:<name>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pre(ctx: dict[str, Any]) -> None:
    """Leaves a file the task reads: proof it ran first, in the work directory."""
    Path("pre.txt").write_text(f"pre {ctx['task_id']} {ctx['stage']}\n")


def post(ctx: dict[str, Any]) -> None:
    """Appends to the task's output after a successful run."""
    with open("out.txt", "a") as f:
        f.write(f"post {ctx['exit_code']}\n")


def post_fails(ctx: dict[str, Any]) -> None:
    raise RuntimeError("postprocess found a bad result")


def give_up(ctx: dict[str, Any]) -> str:
    """An error handler that fails the task at once (no retries)."""
    Path(f"handled-{ctx['attempt']}").write_text(ctx["stderr_tail"])
    return "fail"


def retry_unless_third(ctx: dict[str, Any]) -> str:
    return "fail" if ctx["attempt"] >= 3 else "retry"
