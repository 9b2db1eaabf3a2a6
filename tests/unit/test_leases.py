"""Pilot leases: who has been silent too long. Time is an argument, never read."""

from __future__ import annotations

import pytest

from tidewater.controller.leases import Leases


def test_empty() -> None:
    leases = Leases(timeout=30.0)
    assert leases.next_deadline() is None
    assert leases.expired(1e9) == []
    assert "p" not in leases


def test_touch_registers_and_sets_deadline() -> None:
    leases = Leases(timeout=30.0)
    leases.touch("p", now=100.0)
    assert "p" in leases
    assert leases.next_deadline() == pytest.approx(130.0)


def test_not_expired_before_timeout() -> None:
    leases = Leases(timeout=30.0)
    leases.touch("p", now=100.0)
    assert leases.expired(now=100.0) == []
    assert leases.expired(now=129.999) == []
    assert "p" in leases


def test_expires_exactly_at_its_deadline() -> None:
    leases = Leases(timeout=30.0)
    leases.touch("p", now=100.0)
    deadline = leases.next_deadline()
    assert deadline is not None
    assert leases.expired(now=deadline) == ["p"]


def test_expired_pilots_are_dropped_and_reported_once() -> None:
    leases = Leases(timeout=10.0)
    leases.touch("p", now=0.0)
    assert leases.expired(now=50.0) == ["p"]
    assert "p" not in leases
    assert leases.expired(now=60.0) == []
    assert leases.next_deadline() is None


def test_touch_extends_the_lease() -> None:
    leases = Leases(timeout=10.0)
    leases.touch("p", now=0.0)
    leases.touch("p", now=8.0)  # heartbeat
    assert leases.expired(now=12.0) == []
    assert leases.next_deadline() == pytest.approx(18.0)
    assert leases.expired(now=18.0) == ["p"]


def test_only_silent_pilots_expire() -> None:
    leases = Leases(timeout=10.0)
    leases.touch("quiet", now=0.0)
    leases.touch("chatty", now=0.0)
    leases.touch("late", now=5.0)
    leases.touch("chatty", now=9.0)
    assert leases.next_deadline() == pytest.approx(10.0)
    assert leases.expired(now=10.0) == ["quiet"]
    assert leases.next_deadline() == pytest.approx(15.0)
    assert sorted(leases.expired(now=19.0)) == ["chatty", "late"]
    assert leases.next_deadline() is None


def test_next_deadline_is_earliest() -> None:
    leases = Leases(timeout=5.0)
    for pid, t in [("a", 40.0), ("b", 10.0), ("c", 25.0)]:
        leases.touch(pid, now=t)
    assert leases.next_deadline() == pytest.approx(15.0)


def test_drop() -> None:
    leases = Leases(timeout=5.0)
    leases.touch("a", now=0.0)
    leases.touch("b", now=3.0)
    leases.drop("a")
    leases.drop("a")  # dropping twice is harmless
    leases.drop("never")
    assert "a" not in leases
    assert leases.next_deadline() == pytest.approx(8.0)
    assert leases.expired(now=100.0) == ["b"]


def test_time_going_backwards_does_not_expire() -> None:
    # A non-monotonic `now` (clock step) must not declare a fresh pilot lost.
    leases = Leases(timeout=5.0)
    leases.touch("a", now=100.0)
    assert leases.expired(now=50.0) == []
    assert "a" in leases
