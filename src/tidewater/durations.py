"""One grammar for every duration a user types: ``--timeout``, ``--wall-time``,
``--expires``, ``--idle-timeout``...

Accepted forms (case-insensitive, surrounding blanks ignored)::

    90          plain seconds (a number: 2.5 and 1e3 too)
    90s 30m 2d  a number with a unit: s, m, h, d (decimals allowed: 1.5h)
    1h30m       several units, largest first, each at most once (2d4h, 1m30s)
    MM:SS       minutes and seconds: 05:30
    HH:MM:SS    hours, minutes, seconds: 1:30:00
    D-HH        Slurm's days and hours: 2-12
    D-HH:MM     Slurm's days, hours and minutes: 1-06:30
    D-HH:MM:SS  Slurm's days, hours, minutes and seconds: 1-00:00:00

In the colon forms, minutes and seconds after the first field are below 60,
and hours after a ``D-`` below 24. The result is a number of seconds; it is
never negative, and zero only where the caller allows it.

Pure: no clock, no I/O. :func:`format_duration` writes the compact unit form
(``1h30m``, ``45s``, ``2.5s``) that :func:`parse_duration` reads back.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .errors import ConfigError

FORMS = "90, 90s, 30m, 1h30m, 2d, 1.5h, MM:SS, HH:MM:SS or Slurm's D-HH, D-HH:MM, D-HH:MM:SS"
"""The accepted forms, as error messages name them."""

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT_FORM = re.compile(rf"(?:({_NUM})d)?(?:({_NUM})h)?(?:({_NUM})m)?(?:({_NUM})s)?")
_PLAIN = re.compile(rf"{_NUM}(?:e[+-]?\d+)?")
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class DurationError(ConfigError, ValueError):
    """``text`` is not a duration; the message names the accepted forms."""

    def __init__(self, text: str, reason: str = "") -> None:
        self.text = text
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(f"{text!r} is not a duration{why}: use {FORMS}")


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """Seconds that ``text`` stands for (see the module docstring for the forms).

    Raises DurationError (a ConfigError and ValueError) for anything else,
    for a negative, infinite or NaN value, and for zero unless ``allow_zero``.
    """
    t = text.strip().lower()
    if not t:
        raise DurationError(text, "it is empty")
    if _PLAIN.fullmatch(t):
        value = float(t)
    elif ":" in t or "-" in t:
        value = _clock(text, t)
    else:
        m = _UNIT_FORM.fullmatch(t)
        if m is None or not any(m.groups()):
            raise DurationError(text)
        value = sum(float(g) * u for g, u in zip(m.groups(), _UNITS.values(), strict=True)
                    if g is not None)
    if not math.isfinite(value):
        raise DurationError(text, "it is too large")
    if value == 0 and not allow_zero:
        raise DurationError(text, "it must be more than zero")
    return value


def _clock(text: str, t: str) -> float:
    m = _CLOCK.fullmatch(t)
    if m is None:
        raise DurationError(text)
    days_s, *rest = m.groups()
    fields = [int(x) for x in rest if x is not None]
    if days_s is not None:  # Slurm: D-HH, D-HH:MM, D-HH:MM:SS
        days, (h, mi, s) = int(days_s), (fields + [0, 0])[:3]
        if h >= 24:
            raise DurationError(text, "hours after 'D-' are below 24")
    elif len(fields) == 3:  # HH:MM:SS
        days, (h, mi, s) = 0, fields
    elif len(fields) == 2:  # MM:SS
        days, h, (mi, s) = 0, 0, fields
    else:
        raise DurationError(text)
    if s >= 60 or (mi >= 60 and (h or days or len(fields) == 3)):
        raise DurationError(text, "minutes and seconds after the first field are below 60")
    return float(days * 86400 + h * 3600 + mi * 60 + s)


def format_duration(seconds: float) -> str:
    """``seconds`` in a form :func:`parse_duration` reads back exactly.

    Whole seconds are split into units (``2d3h``, ``1h30m``, ``45s``, ``0s``);
    a fractional value is written in seconds (``2.5s``, ``5400.25s``).
    ``parse_duration(format_duration(x), allow_zero=True) == x`` for every
    finite x >= 0 below 2**53. Raises ValueError for a negative or non-finite value.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{seconds!r} is not a duration in seconds")
    if seconds != math.floor(seconds):
        return f"{Decimal(repr(seconds)):f}s"
    parts = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    if rest or not parts:
        parts.append(f"{rest}s")
    return "".join(parts)


def wall_minutes(seconds: float) -> int:
    """Whole minutes a batch scheduler is asked for: ``seconds`` rounded up, at least 1."""
    return max(1, math.ceil(seconds / 60))


def format_ago(then: float, now: float) -> str:
    """How long before ``now`` the time ``then`` was, for people: ``42 s ago``,
    ``5 min ago``, ``1.5 h ago``; ``never`` for 0 (never heard)."""
    if not then:
        return "never"
    secs = max(0.0, now - then)
    if secs < 120:
        return f"{secs:.0f} s ago"
    if secs < 7200:
        return f"{secs / 60:.0f} min ago"
    return f"{secs / 3600:.1f} h ago"
