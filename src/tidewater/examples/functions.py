"""Functions for Python function apps: the demo's, the benchmarks' and the tests'.

Register one on a site with ``tidewater app add --site S --function
tidewater.examples.functions:integrate integrate``; the site's pilots import it
in their warm workers. Arguments and results travel as msgpack (numpy arrays
included), never pickled.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt


def noop(x: Any = None) -> Any:
    """Return the argument: the cheapest function task there is."""
    return x


def integrate(y: npt.NDArray[np.float64], dx: float = 1.0) -> float:
    """Trapezoidal integral of samples ``y`` spaced ``dx`` apart."""
    return float(np.sum((y[1:] + y[:-1]) * 0.5) * dx)


def normalize(frame: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The frame scaled to [0, 1] (a constant frame becomes zeros)."""
    f = frame.astype(np.float64)
    span = float(f.max() - f.min()) if f.size else 0.0
    return (f - f.min()) / span if span else np.zeros_like(f)


def whoami() -> int:
    """The worker process's pid (to see warm workers reused)."""
    return os.getpid()


def shout(text: str) -> str:
    """Print to stdout and stderr, and return the text upper-cased."""
    sys.stdout.write(f"to stdout: {text}\n")
    sys.stderr.write(f"to stderr: {text}\n")
    return text.upper()


def boom(message: str = "bad frame") -> None:
    """Raise ValueError (a failing function)."""
    raise ValueError(message)


def nap(seconds: float) -> float:
    """Sleep, then return how long."""
    time.sleep(seconds)
    return seconds
