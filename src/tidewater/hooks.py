"""Hooks an app may run on its site, around each of its tasks (``AppHooks``).

Each hook is a callable named by import path (``mylab.hooks:check``) that
exists in the site's Python environment, like a function app. The pilot
calls it in one of its warm worker processes, in the task's work directory,
with one argument, a :class:`HookContext` dict:

* ``preprocess(ctx)`` before the task runs (after its inputs arrived);
  raising fails the attempt.
* ``postprocess(ctx)`` after a successful run, before outputs are collected;
  raising fails the attempt.
* ``on_error(ctx)`` after a non-zero exit (or a raised function) and
  ``on_timeout(ctx)`` after a timeout: return ``"retry"`` to try again (while
  the task's ``max_retries`` allow) or ``"fail"`` to fail the task now.
  Without a handler, a task is retried while retries remain.

Hooks get at most :data:`HOOK_TIMEOUT` seconds. What they print goes to the
task's stdout/stderr files.
"""

from __future__ import annotations

from typing import TypedDict

HOOK_TIMEOUT = 300.0


class HookContext(TypedDict):
    task_id: int
    attempt: int
    workdir: str
    """Absolute path of the task's work directory (also the hook's cwd)."""
    stage: str
    """preprocess | postprocess | on_error | on_timeout"""
    exit_code: int | None
    error: str
    stdout_tail: str
    stderr_tail: str
