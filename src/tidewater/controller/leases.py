"""Pilot leases: who has been silent too long. Pure; time is an argument."""

from __future__ import annotations


class Leases:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last: dict[str, float] = {}

    def touch(self, pilot_id: str, now: float) -> None:
        self._last[pilot_id] = now

    def drop(self, pilot_id: str) -> None:
        self._last.pop(pilot_id, None)

    def __contains__(self, pilot_id: str) -> bool:
        return pilot_id in self._last

    def expired(self, now: float) -> list[str]:
        """Pilots whose lease ran out by ``now``; they are dropped."""
        gone = [p for p, t in self._last.items() if now - t >= self.timeout]
        for p in gone:
            del self._last[p]
        return gone

    def next_deadline(self) -> float | None:
        if not self._last:
            return None
        return min(self._last.values()) + self.timeout
