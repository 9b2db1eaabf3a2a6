"""A site directory: what `site init` writes reads back, and the token stays private."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidewater.agents.settings import init_site, load, pilot_argv, read_token, render_body
from tidewater.errors import ConfigError


def test_init_writes_settings_that_load_and_a_private_token(tmp_path: Path) -> None:
    d = init_site(tmp_path / "site", name="perlmutter", scheduler="slurm",
                  controller="wss://tw.example.org", token="tws_0123456789abcdef.secret")
    s = load(d)
    assert (s.site.name, s.site.scheduler, s.launcher) == ("perlmutter", "slurm", "srun")
    assert read_token(s) == "tws_0123456789abcdef.secret"
    assert (d / "token").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="exists already"):
        init_site(d, name="x", scheduler="local", controller="ws://h", token="t")


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    d = init_site(tmp_path / "site", name="s", scheduler="local", controller="ws://h",
                  token="tws_0123456789abcdef.secret")
    (d / "token").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users: chmod 600"):
        read_token(load(d))


def test_bad_settings_say_what_is_wrong(tmp_path: Path) -> None:
    d = tmp_path / "site"
    d.mkdir()
    (d / "settings.toml").write_text('[site]\nname = "s"\nscheduler = "sge"\n')
    with pytest.raises(ConfigError, match="'sge' is not one of"):
        load(d)
    (d / "settings.toml").write_text('[site]\nname = "s"\nschedulr = "slurm"\n')
    with pytest.raises(ConfigError, match="schedulr"):
        load(d)
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nowhere")


def test_body_quotes_the_pilot_command_and_refuses_unknown_placeholders(tmp_path: Path) -> None:
    d = init_site(tmp_path / "site", name="s", scheduler="local", controller="ws://h",
                  token="tws_0123456789abcdef.secret")
    argv = pilot_argv(load(d), job_id=7, token_file="/a b/pilot-token", head=False)
    body = render_body("run: ${pilot_launch}; n=${nodes}", job_id=7, site="s", nodes=2,
                       wall_time_min=1, pilot_launch=argv)
    assert "'/a b/pilot-token'" in body and "n=2" in body
    with pytest.raises(ConfigError, match="placeholder"):
        render_body("${nope}", job_id=1, site="s", nodes=1, wall_time_min=1, pilot_launch=[])


def test_several_controllers_reach_the_pilots_as_one_url_list(tmp_path: Path) -> None:
    d = init_site(tmp_path / "site", name="s", scheduler="local", controller="ws://a:1",
                  token="tws_0123456789abcdef.secret")
    text = (d / "settings.toml").read_text()
    (d / "settings.toml").write_text(text.replace(
        'controller = "ws://a:1"', 'controller = ["ws://a:1", "ws://b:2"]'))
    argv = pilot_argv(load(d), job_id=7, token_file="/t", head=False)
    assert argv[argv.index("--url") + 1] == "ws://a:1/ws,ws://b:2/ws"
    (d / "settings.toml").write_text(text.replace('controller = "ws://a:1"',
                                                  'controller = "ws://a:1,ftp://b"'))
    with pytest.raises(ConfigError, match="site.controller"):
        load(d)
