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


# ---------------------------------------------------------------------- the disconnect grace

def test_a_closed_connection_shortens_the_lease_to_the_grace() -> None:
    leases = Leases(timeout=30.0, grace=3.0)
    leases.touch("p", now=100.0)
    leases.closed("p", now=110.0)
    assert leases.is_closed("p")
    assert leases.next_deadline() == pytest.approx(113.0)
    assert leases.expired(now=112.9) == []
    assert leases.expired(now=113.0) == ["p"]


def test_a_merely_silent_pilot_keeps_its_whole_lease() -> None:
    leases = Leases(timeout=30.0, grace=3.0)
    leases.touch("p", now=100.0)
    assert not leases.is_closed("p")
    assert leases.expired(now=129.9) == []
    assert leases.expired(now=130.0) == ["p"]


def test_the_grace_never_extends_a_lease_already_nearly_out() -> None:
    leases = Leases(timeout=30.0, grace=3.0)
    leases.touch("p", now=100.0)
    leases.closed("p", now=129.0)
    assert leases.next_deadline() == pytest.approx(130.0)


def test_coming_back_within_the_grace_restores_the_whole_lease() -> None:
    leases = Leases(timeout=30.0, grace=3.0)
    leases.touch("p", now=100.0)
    leases.closed("p", now=101.0)
    leases.touch("p", now=102.0)  # its Hello on a new connection
    assert not leases.is_closed("p")
    assert leases.expired(now=110.0) == []
    assert leases.next_deadline() == pytest.approx(132.0)


def test_the_grace_is_capped_by_the_lease_and_a_closed_unknown_pilot_is_ignored() -> None:
    leases = Leases(timeout=5.0, grace=60.0)
    assert leases.grace == 5.0
    leases.closed("ghost", now=0.0)
    assert "ghost" not in leases and not leases.is_closed("ghost")


def test_config_grace_defaults_to_three_heartbeats_within_the_lease() -> None:
    from tidewater.config import Timeouts

    assert Timeouts(heartbeat_interval=5.0, lease_timeout=30.0).grace() == 15.0
    assert Timeouts(heartbeat_interval=5.0, lease_timeout=10.0).grace() == 10.0
    assert Timeouts(disconnect_grace=2.0).grace() == 2.0
