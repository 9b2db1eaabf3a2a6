"""Dashboard sessions: a random id in a cookie, the principal it stands for, server-side. Pure.

A browser logs in once with a user token; the server keeps only the
:class:`~tidewater.controller.model.Principal` the token authenticated, under
a fresh random id (256 bits, ``secrets``), and the browser holds that id in
an ``HttpOnly``, ``SameSite=Strict`` cookie. The token itself is never
stored, echoed or put in the cookie. A session ends at logout, after
``ttl`` seconds, when its token expires (whichever is first), or when the
controller closes it because the token was revoked or its user removed.

No clock is read here: ``now`` is an argument.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..model import Principal

COOKIE = "tidewater_session"
"""The session cookie's name."""
TTL = 8 * 3600.0
"""How long a session lasts at most (a working day), seconds."""
MAX_SESSIONS = 10_000
"""Sessions held at once; past it the oldest is dropped (a login flood cannot grow memory)."""


@dataclass
class Session:
    id: str
    who: Principal
    expires_at: float


class SessionBook:
    """Live sessions by id. ``ttl`` bounds each; a token's own expiry bounds it sooner."""

    def __init__(self, ttl: float = TTL, max_sessions: int = MAX_SESSIONS) -> None:
        if ttl <= 0:
            raise ValueError(f"a session's ttl must be positive, not {ttl}")
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.sessions: dict[str, Session] = {}

    def open(self, who: Principal, now: float) -> tuple[Session, list[Session]]:
        """A new session for ``who``; and the sessions dropped to make room (oldest first)."""
        expires = now + self.ttl
        if who.expires_at is not None:
            expires = min(expires, who.expires_at)
        s = Session(id=secrets.token_urlsafe(32), who=who, expires_at=expires)
        dropped = []
        while len(self.sessions) >= self.max_sessions:
            oldest = next(iter(self.sessions))
            dropped.append(self.sessions.pop(oldest))
        self.sessions[s.id] = s
        return s, dropped

    def get(self, sid: str | None, now: float) -> Session | None:
        """The live session of this cookie value (None: no such session, or it expired)."""
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None or s.expires_at <= now:
            return None
        return s

    def close(self, sid: str) -> Session | None:
        """End a session (logout, token revoked); the session ended, if there was one."""
        return self.sessions.pop(sid, None)

    def expired(self, now: float) -> list[Session]:
        """Remove and return every session whose time is up."""
        gone = [s for s in self.sessions.values() if s.expires_at <= now]
        for s in gone:
            del self.sessions[s.id]
        return gone
