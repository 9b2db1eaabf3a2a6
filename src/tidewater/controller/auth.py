"""Tokens: minting, parsing and checking. Pure.

A token is ``tw<kind>_<id>.<secret>``: ``id`` (16 hex digits) names it in
listings, revocation and the audit trail; ``secret`` (32 random bytes,
urlsafe base64) is never stored. The store keeps a per-token random salt and
SHA-256(salt + secret), compared with :func:`hmac.compare_digest`. The
secret has 256 bits of entropy, so a fast hash is enough: the salt only
keeps equal secrets (there are none) and precomputed tables useless.

Tokens minted before token ids existed (``tw<kind>_<secret>``) are still
accepted: their unsalted hash was carried into the tokens table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

TokenKind = Literal["user", "site", "pilot"]
_PREFIX: dict[TokenKind, str] = {"user": "twu_", "site": "tws_", "pilot": "twp_"}
_KINDS: dict[str, TokenKind] = {v: k for k, v in _PREFIX.items()}


@dataclass(frozen=True)
class Minted:
    token: str
    """The whole token: shown to its owner once, never stored."""
    id: str
    salt: str
    hash: str


@dataclass(frozen=True)
class Parsed:
    kind: TokenKind
    id: str
    """Empty for a token minted before token ids (``legacy``)."""
    secret: str

    @property
    def legacy(self) -> bool:
        return not self.id


def digest(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode("utf-8", "surrogatepass")).hexdigest()


def mint(kind: TokenKind) -> Minted:
    tid = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return Minted(token=f"{_PREFIX[kind]}{tid}.{secret}", id=tid, salt=salt,
                  hash=digest(salt, secret))


def parse(token: str) -> Parsed | None:
    """Split a token into kind, id and secret; None if it is not one of ours."""
    kind = _KINDS.get(token[:4])
    if kind is None or len(token) > 200:
        return None
    body = token[4:]
    tid, dot, secret = body.partition(".")
    if dot:
        if len(tid) != 16 or not all(c in "0123456789abcdef" for c in tid) or not secret:
            return None
        return Parsed(kind, tid, secret)
    return Parsed(kind, "", token) if body else None  # legacy: the hash covers the whole token


def check(parsed: Parsed, salt: str, stored: str) -> bool:
    """Does the token's secret match the stored salted hash? (constant time)"""
    return hmac.compare_digest(digest(salt, parsed.secret), stored)


def legacy_hash(token: str) -> str:
    """The unsalted hash tokens minted before token ids were stored under."""
    return digest("", token)


def kind_of(token: str) -> TokenKind | None:
    p = parse(token)
    return p.kind if p else None
