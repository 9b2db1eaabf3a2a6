"""What the fake PBS, LSF and Cobalt executables share.

Each fake runs the submitted script for real through localexec (detached,
wall time enforced), keeps its jobs under ``$TIDEWATER_FAKE_SCHED_DIR/<kind>``
and prints what the real tool prints. Knobs (environment):

- ``TIDEWATER_FAKE_SCHED_DIR`` (required): where the jobs live.
- ``TIDEWATER_FAKE_SCHED_REJECT=1``: the submit command refuses the job.
- ``TIDEWATER_FAKE_SCHED_MINUTE``: seconds one minute of wall time lasts (default 60).
- ``TIDEWATER_FAKE_SCHED_GRACE``: SIGTERM -> SIGKILL delay at a kill (default 2 s).
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn

from tidewater.agents.schedulers import localexec


def die(tool: str, message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"{message}\n" if message.startswith(tool) else f"{tool}: {message}\n")
    raise SystemExit(code)


def state_dir(tool: str, kind: str) -> Path:
    root = os.environ.get("TIDEWATER_FAKE_SCHED_DIR")
    if not root:
        die(tool, "TIDEWATER_FAKE_SCHED_DIR is not set (this is a test fake)", 2)
    return Path(root) / kind


def reject_requested() -> bool:
    return os.environ.get("TIDEWATER_FAKE_SCHED_REJECT") == "1"


def minute_seconds() -> float:
    return float(os.environ.get("TIDEWATER_FAKE_SCHED_MINUTE", "60"))


def kill_grace() -> float:
    return float(os.environ.get("TIDEWATER_FAKE_SCHED_GRACE", "2"))


def host() -> str:
    return socket.gethostname().split(".")[0]


def user() -> str:
    return getpass.getuser()


def directive_words(text: str, prefix: str) -> list[str]:
    """All words of the script's ``prefix`` lines, in order."""
    return [w for line in localexec.parse_directives(text, prefix) for w in line]


def ctime(t: float) -> str:
    """``Wed Nov 25 15:56:17 2026`` (what PBS prints)."""
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(t))


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def read_script(tool: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        die(tool, f"script file:: {exc.strerror}")


def submit(kind: str, tool: str, script: Path, **kwargs: object) -> int:
    """localexec.submit_job with the fake's state dir and time knobs."""
    return localexec.submit_job(
        state_dir(tool, kind), script, minute_seconds=minute_seconds(), kill_grace=kill_grace(),
        **kwargs,  # type: ignore[arg-type]
    )


def jobs(tool: str, kind: str) -> list[localexec.LocalJob]:
    return localexec.list_jobs(state_dir(tool, kind))
