"""Where the client's URL, token, CA file and site come from: flag, env, profile, default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewater.errors import ConfigError
from tidewater.profiles import (
    Config,
    config_path,
    connection,
    load_config,
    parse_config,
    render_config,
    resolve,
    save_profile,
)

CFG = Config(Path("/c/config.toml"),
             {"prod": {"url": "wss://prod:8765", "site": "polaris", "token_file": "/t"},
              "dev": {"url": "ws://dev:1"}}, "prod")


def test_flag_beats_env_beats_profile_beats_default() -> None:
    r = resolve({}, {}, CFG)
    assert (r.profile.value, r.url.value, r.url.source) == (
        "prod", "wss://prod:8765", "profile prod in /c/config.toml")
    assert r.profile.source == "default_profile in /c/config.toml"
    r = resolve({}, {"TIDEWATER_URL": "ws://env:2", "TIDEWATER_SITE": "theta"}, CFG)
    assert (r.url.value, r.url.source, r.site.source) == (
        "ws://env:2", "env TIDEWATER_URL", "env TIDEWATER_SITE")
    r = resolve({"url": "ws://flag:3"}, {"TIDEWATER_URL": "ws://env:2"}, CFG)
    assert (r.url.value, r.url.source) == ("ws://flag:3", "flag --url")
    r = resolve({}, {}, Config(Path("/none")))
    assert (r.url.value, r.url.source, r.site.source) == (
        "ws://127.0.0.1:8765", "default", "unset")


def test_profile_selection_and_unknown_profile() -> None:
    assert resolve({}, {"TIDEWATER_PROFILE": "dev"}, CFG).url.value == "ws://dev:1"
    assert resolve({"profile": "dev"}, {"TIDEWATER_PROFILE": "prod"}, CFG).site.value == ""
    with pytest.raises(ConfigError, match="no profile 'nope' .*tidewater login URL --profile"):
        resolve({"profile": "nope"}, {}, CFG)


@pytest.mark.parametrize(("text", "problem"), [
    ("url = 1", "unknown key"), ("[profiles.a]\nport = 1", "unknown key"),
    ("[profiles.a]\nurl = 1", "must be a string"), ("[[", "config.toml"),
])
def test_bad_files_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(Path("/c/config.toml"), text)


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10)


@given(st.dictionaries(names, st.fixed_dictionaries({}, optional={
    "url": st.text(min_size=1), "site": st.text(min_size=1), "ca_file": st.text(min_size=1)}),
    max_size=3))
def test_render_parse_round_trip(profiles: dict[str, dict[str, str]]) -> None:
    cfg = Config(Path("/c"), profiles, next(iter(profiles), ""))
    assert parse_config(Path("/c"), render_config(cfg)) == cfg


def test_save_profile_keeps_others_and_connection_uses_it(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert config_path(env) == tmp_path / "tidewater" / "config.toml"
    save_profile(env, "a", {"url": "ws://a:1"}, token="twu_a", make_default=True)
    path, tok = save_profile(env, "b", {"url": "ws://b:2", "site": "s"}, token="twu_b",
                             make_default=False)
    assert tok is not None and os.stat(tok).st_mode & 0o777 == 0o600
    cfg = load_config(env)
    assert (sorted(cfg.profiles), cfg.default_profile) == (["a", "b"], "a")
    assert connection(None, None, None, env) == ("ws://a:1", "twu_a", "")
    assert connection(None, None, None, {**env, "TIDEWATER_PROFILE": "b"})[:2] == (
        "ws://b:2", "twu_b")
    assert connection("ws://x:9", None, None, env) == ("ws://x:9", "twu_a", "")
    with pytest.raises(ConfigError, match="profile name"):
        save_profile(env, "../x", {}, token=None, make_default=False)
