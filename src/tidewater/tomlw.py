"""Writing TOML values that ``tomllib`` reads back exactly.

Only what Tidewater writes by hand (site ``settings.toml``, the CLI's
``config.toml``) needs this: basic strings and keys. A basic string escapes
``"`` and ``\\``, uses the short escapes ``\\b \\t \\n \\f \\r`` and writes every
other control character (U+0000-U+001F, U+007F) as ``\\uXXXX``, so a value
never ends its line or its string early. Pure.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_SHORT = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"',
          "\\": "\\\\"}
_NEEDS = re.compile(r'[\x00-\x1f\x7f"\\]')
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, quotes included.

    Raises ConfigError for a lone surrogate (not a Unicode scalar value, so
    TOML cannot hold it).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{value!r} holds a lone surrogate: TOML cannot store it") from None
    return '"' + _NEEDS.sub(
        lambda m: _SHORT.get(m.group(), f"\\u{ord(m.group()):04X}"), value) + '"'


def toml_key(key: str) -> str:
    """``key`` bare when TOML allows (letters, digits, ``_``, ``-``), else quoted."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)
