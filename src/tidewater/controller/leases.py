"""Pilot leases: who has been silent too long, or gone too long. Pure; time is an argument.

A pilot's lease runs ``timeout`` seconds from the last thing it said. When
its connection *closes* (the process died, the host rebooted, the pilot
hung up without a Bye) there is no need to wait that long: nothing it says
can reach us until it connects again, so :meth:`Leases.closed` shortens the
lease to a short ``grace`` -- long enough for a pilot whose link merely broke
to reconnect, far shorter than the lease. A pilot that is merely *silent*
with its connection open (a partition, a frozen host: no FIN arrives) keeps
the whole lease, so a short network hiccup never costs it its tasks.
"""

from __future__ import annotations


class Leases:
    def __init__(self, timeout: float, grace: float | None = None) -> None:
        self.timeout = timeout
        self.grace = timeout if grace is None else min(grace, timeout)
        self._deadline: dict[str, float] = {}
        self._closed: set[str] = set()

    def touch(self, pilot_id: str, now: float) -> None:
        """The pilot spoke (or connected): its whole lease runs from ``now``."""
        self._deadline[pilot_id] = now + self.timeout
        self._closed.discard(pilot_id)

    def closed(self, pilot_id: str, now: float) -> None:
        """The pilot's connection closed at ``now``: it is lost unless back within the grace."""
        if pilot_id in self._deadline:
            self._deadline[pilot_id] = min(self._deadline[pilot_id], now + self.grace)
            self._closed.add(pilot_id)

    def is_closed(self, pilot_id: str) -> bool:
        """Its lease was cut short by a closed connection (not by silence)."""
        return pilot_id in self._closed

    def drop(self, pilot_id: str) -> None:
        self._deadline.pop(pilot_id, None)
        self._closed.discard(pilot_id)

    def __contains__(self, pilot_id: str) -> bool:
        return pilot_id in self._deadline

    def expired(self, now: float) -> list[str]:
        """Pilots whose lease ran out by ``now``. Their deadlines are dropped; whether
        each was closed (:meth:`is_closed`) is kept until :meth:`drop`."""
        gone = [p for p, t in self._deadline.items() if now >= t]
        for p in gone:
            del self._deadline[p]
        return gone

    def next_deadline(self) -> float | None:
        if not self._deadline:
            return None
        return min(self._deadline.values())
