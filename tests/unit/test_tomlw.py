"""Strings and keys written into settings.toml and config.toml read back exactly."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewater.agents.settings import init_site, load
from tidewater.errors import ConfigError
from tidewater.tomlw import toml_key, toml_string


@given(st.text())
def test_any_string_round_trips(value: str) -> None:
    assert tomllib.loads(f"v = {toml_string(value)}\n")["v"] == value


@given(st.text(min_size=1), st.text())
def test_any_key_round_trips(key: str, value: str) -> None:
    assert tomllib.loads(f"{toml_key(key)} = {toml_string(value)}\n") == {key: value}


def test_escapes_are_the_short_ones_where_toml_has_them() -> None:
    assert toml_string('a"\\\b\t\n\f\r\x00\x1f\x7f') == r'"a\"\\\b\t\n\f\r\u0000\u001F\u007F"'


def test_lone_surrogate_refused() -> None:
    with pytest.raises(ConfigError, match="surrogate"):
        toml_string("\ud800")


@given(st.dictionaries(st.text(min_size=1), st.text(), max_size=4))
def test_site_init_options_round_trip(options: dict[str, str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        init_site(Path(d) / "s", name='we"ird\nname', scheduler="local",
                  controller="ws://127.0.0.1:1", token="tws_x", options=options)
        raw = tomllib.loads((Path(d) / "s" / "settings.toml").read_text())
        assert raw["scheduler"] == options
        assert raw["site"]["name"] == 'we"ird\nname'
        assert load(Path(d) / "s").site.name == 'we"ird\nname'
