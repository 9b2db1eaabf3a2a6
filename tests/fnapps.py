"""Functions for the function-app tests, imported by warm workers as ``tests.fnapps:<name>``.

The workers import this module in their own process (the tests put the
project root on ``PYTHONPATH``); the tests call the same functions locally to
compare results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt


def add(a: Any, b: Any) -> Any:
    return a + b


def noop() -> None:
    return None


def echo(*args: Any, **kwargs: Any) -> Any:
    return [list(args), kwargs]


def integrate(x: npt.NDArray[np.float64], dx: float = 1.0) -> float:
    """The trapezoid rule: a float from an array."""
    return float(np.sum((x[1:] + x[:-1]) * (dx / 2)))


def scale(x: npt.NDArray[Any], k: float) -> npt.NDArray[Any]:
    return x * k


def boom(message: str) -> None:
    raise ValueError(message)


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def announce_then_sleep(seconds: float) -> None:
    """Print this process's pid and a child's pid (flushed), then sleep: for timeouts."""
    child = subprocess.Popen(["sleep", str(seconds)])
    print(os.getpid(), child.pid, flush=True)  # noqa: T201 - the test reads it
    time.sleep(seconds)


def crash(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def exits(code: int) -> None:
    sys.exit(code)


def whoami() -> int:
    return os.getpid()


def getcwd() -> str:
    return os.getcwd()


def leave_file(name: str, text: str, say: str = "") -> str:
    """Write ``name`` in the current directory (and ``say`` on stdout); the directory."""
    with open(name, "w") as f:
        f.write(text)
    if say:
        print(say)  # noqa: T201 - printing is the point
    return os.getcwd()


def read_file(name: str) -> str:
    with open(name) as f:
        return f.read()


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def noisy(n: int) -> int:
    """Write to stdout from Python and from the fd, to stderr, and read stdin."""
    for i in range(n):
        print(f"line {i}")  # noqa: T201 - printing is the point
    os.write(1, b"raw fd 1\n")
    print("to stderr", file=sys.stderr)  # noqa: T201
    sys.stdin.read()
    return n


def unsendable() -> set[int]:
    return {1, 2}


class Thing:
    @staticmethod
    def double(x: int) -> int:
        return 2 * x


NOT_CALLABLE = 42


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def raise_unprintable() -> None:
    raise Unprintable()


# ---------------------------------------------------------------- exceptions raised remotely


def sqrt(x: float) -> float:
    import math

    return math.sqrt(x)  # the remote traceback names this line


def lookup(key: str) -> int:
    return {"a": 1}[key]


def divide(a: float, b: float) -> float:
    return a / b


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def decode(data: bytes) -> str:
    return data.decode("utf-8")


class FrameError(ValueError):
    """A user's exception deriving from a built-in one."""


def bad_frame(n: int) -> None:
    raise FrameError(f"frame {n} is empty")


class Unrelated(Exception):
    """A user's exception deriving from no built-in but Exception."""


def unrelated() -> None:
    raise Unrelated("nothing built in about it")


def interrupt() -> None:
    raise KeyboardInterrupt


def sleep_then_return(seconds: float, pidfile: str) -> float:
    """Write this process's pid and a newline to ``pidfile`` (a named pipe the test
    reads), then sleep: for cancelling a running call."""
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return seconds
