"""The one duration grammar every CLI option reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewater.durations import DurationError, format_duration, parse_duration, wall_minutes


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("2.5", 2.5), ("1e+06", 1e6), ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2d", 172800),
    ("1.5h", 5400), ("2d4h", 187200), ("1m30s", 90), (" 30M ", 1800),
    ("05:30", 330), ("90:00", 5400), ("1:30:00", 5400), ("100:00:00", 360000),
    ("2-12", 216000), ("1-06:30", 109800), ("1-00:00:00", 86400), ("0-00:00:05", 5),
])
def test_accepted_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "soon", "30x", "h", "1h1h", "30m1h", "-5", "1:2:3:4", "1:60", "1:00:60", "1:60:00",
    "1-24", "1-23:60", "5-", "-1:00", "nan", "inf", "1e999", "0", "0s", "00:00",
])
def test_refused_forms_name_the_grammar(text: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert "D-HH:MM:SS" in str(info.value) and repr(text) in str(info.value)


def test_zero_only_when_allowed() -> None:
    assert parse_duration("0", allow_zero=True) == 0
    assert parse_duration("0:00", allow_zero=True) == 0


def test_format_examples() -> None:
    assert [format_duration(x) for x in (0, 45, 90, 5400, 187200, 2.5)] == [
        "0s", "45s", "1m30s", "1h30m", "2d4h", "2.5s"]
    with pytest.raises(ValueError, match="not a duration"):
        format_duration(-1)


def test_wall_minutes_round_up() -> None:
    assert [wall_minutes(s) for s in (1, 60, 61, 5400)] == [1, 1, 2, 90]


@given(st.integers(min_value=0, max_value=2**53 - 1))
def test_whole_seconds_round_trip(n: int) -> None:
    assert parse_duration(format_duration(n), allow_zero=True) == n


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_any_seconds_round_trip(x: float) -> None:
    assert parse_duration(format_duration(x), allow_zero=True) == x


@given(st.integers(0, 30), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_slurm_and_clock_forms_agree(d: int, h: int, m: int, s: int) -> None:
    total = d * 86400 + h * 3600 + m * 60 + s
    assert parse_duration(f"{d}-{h:02}:{m:02}:{s:02}", allow_zero=True) == total
    assert parse_duration(f"{d * 24 + h}:{m:02}:{s:02}", allow_zero=True) == total
    assert parse_duration(f"{d}d{h}h{m}m{s}s", allow_zero=True) == total
