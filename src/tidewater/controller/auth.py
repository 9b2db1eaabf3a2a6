"""Token minting and hashing. Pure.

A token is ``tw<kind>_<32 random bytes, urlsafe base64>``; only its SHA-256
is stored. The secret has 256 bits of entropy, so an unkeyed hash cannot be
reversed by guessing, and lookup by hash needs no timing-sensitive compare.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

TokenKind = Literal["user", "site", "pilot"]
_PREFIX: dict[TokenKind, str] = {"user": "twu_", "site": "tws_", "pilot": "twp_"}


def mint(kind: TokenKind) -> str:
    return _PREFIX[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def kind_of(token: str) -> TokenKind | None:
    for kind, prefix in _PREFIX.items():
        if token.startswith(prefix):
            return kind
    return None
