"""The relay's settings and the pure parts of the relay: addresses, CONNECT requests,
the pilots' command line, and clear refusals of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidewater.agents.relay import RelayRefused, parse_connect, targets
from tidewater.agents.settings import init_site, load, pilot_argv
from tidewater.errors import ConfigError
from tidewater.transport import format_address, parse_address


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:7700", ("0.0.0.0", 7700)),
    ("login01:7700", ("login01", 7700)),
    (" login01.example.org:1 ", ("login01.example.org", 1)),
    ("[::]:7700", ("::", 7700)),
    ("[fe80::1]:65535", ("fe80::1", 65535)),
])
def test_addresses_parse_and_format_back(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("7700", "must be HOST:PORT"),
    ("login01", "must be HOST:PORT"),
    (":7700", "must be HOST:PORT"),
    ("login01:", "port must be a number"),
    ("login01:0", "port must be a number from 1 to 65535"),
    ("login01:70000", "from 1 to 65535"),
    ("login01:http", "port must be a number"),
    ("::1:7700", "must be HOST:PORT"),  # an IPv6 address needs brackets
    ("[::1]7700", "must be HOST:PORT"),
])
def test_bad_addresses_say_what_to_write(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        parse_address(text, "relay.listen")
    assert "relay.listen" in str(info.value) and repr(text) in str(info.value)


def test_targets_are_the_controllers_hosts_and_ports_with_default_ports() -> None:
    assert targets("wss://CTL.example.org, ws://10.0.0.2:8765/ws, https://standby") == [
        ("ctl.example.org", 443), ("10.0.0.2", 8765), ("standby", 443)]
    assert targets(["ws://a", "ws://a:80"]) == [("a", 80)]
    with pytest.raises(ConfigError):
        targets("tcp://a:1")


def connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def test_connect_requests_for_the_sites_controllers_only() -> None:
    allowed = targets("wss://ctl.example.org:8765,wss://[fd00::2]:8765")
    assert parse_connect(connect("CTL.example.org:8765"), allowed) == ("ctl.example.org", 8765)
    assert parse_connect(connect("[fd00::2]:8765"), allowed) == ("fd00::2", 8765)
    for other in ("ctl.example.org:22", "evil.example.org:8765", "127.0.0.1:5432"):
        with pytest.raises(RelayRefused) as info:
            parse_connect(connect(other), allowed)
        assert info.value.status == 403 and "not a controller of this site" in info.value.reason
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"CONNECT ctl.example.org HTTP/1.1\r\n\r\n",
                b"\x16\x03\x01\x02\x00\r\n\r\n", b"CONNECT a:1 SSH-2.0\r\n\r\n"):
        with pytest.raises(RelayRefused) as info:
            parse_connect(bad, allowed)
        assert info.value.status == 400


def site(tmp_path: Path, relay: str = "") -> Path:
    d = init_site(tmp_path / "site", name="s", scheduler="slurm",
                  controller="wss://ctl.example.org", token="tws_0123456789abcdef.secret")
    if relay:  # the template's [relay] section (the last one) replaced by these lines
        f = d / "settings.toml"
        f.write_text(f.read_text().partition("[relay]")[0] + f"[relay]\n{relay}\n")
    return d


def test_the_relay_is_off_by_default_and_documented_in_the_template(tmp_path: Path) -> None:
    d = site(tmp_path)
    text = (d / "settings.toml").read_text()
    assert "[relay]" in text and 'listen = ""' in text and "advertise" in text
    s = load(d)
    assert s.relay.listen == "" and s.relay_address("login01") is None
    assert "--relay" not in pilot_argv(s, job_id=1, token_file="t", head=False)


def test_pilots_are_given_the_address_to_dial(tmp_path: Path) -> None:
    s = load(site(tmp_path, 'listen = "0.0.0.0:7700"'))
    argv = pilot_argv(s, job_id=1, token_file="t", head=False, hostname="login01")
    assert argv[argv.index("--relay") + 1] == "login01:7700"
    # The controller URL stays the controller's: TLS is checked against its name.
    assert argv[argv.index("--url") + 1] == "wss://ctl.example.org/ws"
    s = load(site(tmp_path / "b", 'listen = "10.1.2.3:7701"'))
    assert s.relay_address("login01") == "10.1.2.3:7701"
    s = load(site(tmp_path / "c", 'listen = "[::]:7700"\nadvertise = "login01-ib:7700"'))
    assert s.relay_address("login01") == "login01-ib:7700"


@pytest.mark.parametrize(("lines", "why"), [
    ('listen = "7700"', "relay.listen '7700' must be HOST:PORT"),
    ('listen = "0.0.0.0:99999"', "from 1 to 65535"),
    ('listen = "*:7700"', 'write "0.0.0.0:PORT"'),
    ('advertise = "login01:7700"', "relay.advertise is set but relay.listen is not"),
    ('listen = "0.0.0.0:7700"\nadvertise = "0.0.0.0:7700"', "not a wildcard"),
    ('listen = "0.0.0.0:7700"\nadvertise = "login01"', "relay.advertise 'login01' must be"),
    ('listen = "0.0.0.0:7700"\nmax_connections = 0', "at least 1"),
    ('listen = "0.0.0.0:7700"\nconnect_timeout = 0', "more than 0 seconds"),
    ('listen = 7700', "Expected `str`"),
    ('listne = "0.0.0.0:7700"', "listne"),
])
def test_bad_relay_settings_are_refused_with_the_reason(tmp_path: Path, lines: str,
                                                        why: str) -> None:
    d = site(tmp_path, lines)
    with pytest.raises(ConfigError, match=why) as info:
        load(d)
    assert "settings.toml" in str(info.value)


def test_a_pilot_given_a_malformed_relay_address_says_so_and_does_not_start() -> None:
    from click.testing import CliRunner

    from tidewater.cli import main

    r = CliRunner().invoke(main, ["--token", "t", "pilot", "--relay", "login01"])
    assert r.exit_code == 2
    assert "--relay 'login01' must be HOST:PORT" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["--token", "t", "pilot"], env={"TIDEWATER_RELAY": "x:0"})
    assert r.exit_code == 2 and "from 1 to 65535" in " ".join(r.output.split())
