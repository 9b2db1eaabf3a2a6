"""TLS without sockets: dev certificates, the contexts built from them, the listen policy.

Handshakes run over in-memory BIOs between :func:`server_context` and
:func:`client_context`, so what a peer would accept or refuse is checked
without a network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from tidewater import TLSError
from tidewater.agents.settings import init_site, load, pilot_argv
from tidewater.cli import main
from tidewater.config import ControllerConfig
from tidewater.errors import ConfigError, ConnectionError_
from tidewater.tls import (
    check_listen,
    client_context,
    dev_cert_names,
    is_loopback,
    issue_dev_cert,
    server_context,
    write_dev_cert,
)
from tidewater.transport import is_retryable

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def made() -> tuple[Path, list[Path]]:
    """One dev certificate on disk for the module (key generation is the slow part)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="tw-tls-"))
    cert = issue_dev_cert(dev_cert_names("node7.example.org", ["ctl.example.org", "10.1.2.3"]),
                          now=dt.datetime.now(dt.UTC))
    return d, write_dev_cert(d, cert)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A full TLS handshake over memory; raises what the client's ``do_handshake`` raises."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname=name)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for key, end in (("c", cli), ("s", srv)):
            if not done[key]:
                try:
                    end.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    if key == "c":
                        raise
                    done[key] = True  # the server gave up: let the client say why
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


# --------------------------------------------------------------------------- dev certificates


def test_dev_cert_names_are_loopback_hostname_and_extras_once() -> None:
    assert dev_cert_names("vm", ["ctl.example.org", "LOCALHOST", "[::1]", "vm", ""]) == [
        "localhost", "127.0.0.1", "::1", "vm", "ctl.example.org"]


def test_dev_cert_ca_verifies_the_server_cert_for_every_name(
    made: tuple[Path, list[Path]],
) -> None:
    d, written = made
    assert [p.name for p in written] == ["ca.pem", "server.pem", "server.key"]
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "node7.example.org",
                                                      "ctl.example.org"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1", "::1", "10.1.2.3"]
    store = Store([ca])
    for name in ("localhost", "node7.example.org", "ctl.example.org"):
        chain = PolicyBuilder().store(store).build_server_verifier(DNSName(name)).verify(leaf, [])
        assert chain[-1] == ca
    for ip in ("127.0.0.1", "::1", "10.1.2.3"):
        verifier = PolicyBuilder().store(store).build_server_verifier(
            IPAddress(ipaddress.ip_address(ip)))
        verifier.verify(leaf, [])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_dev_cert_key_is_private_and_certs_are_readable(made: tuple[Path, list[Path]]) -> None:
    d, _ = made
    assert stat.S_IMODE((d / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "ca.pem").stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in (d / "server.key").read_bytes()
    # The CA's key is not kept anywhere: it can vouch for nothing else.
    assert sorted(p.name for p in d.iterdir()) == ["ca.pem", "server.key", "server.pem"]
    assert b"PRIVATE" not in (d / "ca.pem").read_bytes() + (d / "server.pem").read_bytes()


def test_dev_cert_validity_starts_just_before_now() -> None:
    cert = issue_dev_cert(["localhost"], now=NOW, days=30)
    leaf = x509.load_pem_x509_certificate(cert.cert_pem)
    assert leaf.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=30)


def test_dev_cert_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = issue_dev_cert(["localhost"], now=NOW)
    write_dev_cert(tmp_path, first)
    (tmp_path / "server.key").chmod(0o644)
    second = issue_dev_cert(["localhost"], now=NOW)
    with pytest.raises(ConfigError, match="exists already: pass --force"):
        write_dev_cert(tmp_path, second)
    assert (tmp_path / "ca.pem").read_bytes() == first.ca_pem
    write_dev_cert(tmp_path, second, force=True)
    assert (tmp_path / "ca.pem").read_bytes() == second.ca_pem
    # Replacing a key that had become readable makes it private again.
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("bad", [[], ["not a host!"], ["-" * 300]])
def test_dev_cert_refuses_bad_names(bad: list[str]) -> None:
    with pytest.raises(ConfigError):
        issue_dev_cert(bad, now=NOW)


def test_cli_dev_cert_writes_files_and_says_how_to_use_them(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["dev-cert", str(tmp_path / "tls"), "--host", "ctl.example.org"])
    assert r.exit_code == 0, r.output
    for f in ("ca.pem", "server.pem", "server.key"):
        assert (tmp_path / "tls" / f).exists()
        assert f in r.output
    assert "--tls-cert" in r.output and "--ca-file" in r.output
    assert "wss://ctl.example.org:8765" in r.output
    again = CliRunner().invoke(main, ["dev-cert", str(tmp_path / "tls")])
    assert again.exit_code != 0 and "--force" in again.output


# --------------------------------------------------------------------------- contexts


def test_right_ca_verifies_by_every_name(made: tuple[Path, list[Path]]) -> None:
    d, _ = made
    srv = server_context(str(d / "server.pem"), str(d / "server.key"))
    cli = client_context(d / "ca.pem")
    for name in ("localhost", "127.0.0.1", "::1", "ctl.example.org"):
        handshake(srv, cli, name)


def test_other_ca_or_system_store_or_wrong_name_is_refused(
    made: tuple[Path, list[Path]], tmp_path: Path,
) -> None:
    d, _ = made
    srv = server_context(str(d / "server.pem"), str(d / "server.key"))
    write_dev_cert(tmp_path, issue_dev_cert(["localhost"], now=dt.datetime.now(dt.UTC)))
    for cli in (client_context(tmp_path / "ca.pem"), client_context(None)):
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            handshake(srv, cli, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(srv, client_context(d / "ca.pem"), "elsewhere.example.org")


def test_contexts_require_tls12_and_verification(made: tuple[Path, list[Path]]) -> None:
    d, _ = made
    srv = server_context(str(d / "server.pem"), str(d / "server.key"))
    cli = client_context(d / "ca.pem")
    assert srv.minimum_version == cli.minimum_version == ssl.TLSVersion.TLSv1_2
    assert cli.check_hostname and cli.verify_mode == ssl.CERT_REQUIRED


def test_client_context_bad_ca_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"CA file .*nope\.pem not found.*--ca-file"):
        client_context(tmp_path / "nope.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"cannot read CA file .*junk\.pem"):
        client_context(junk)


def test_server_context_bad_files_say_which(made: tuple[Path, list[Path]], tmp_path: Path) -> None:
    d, _ = made
    with pytest.raises(ConfigError, match=r"nope\.pem not found"):
        server_context(str(tmp_path / "nope.pem"), str(d / "server.key"))
    with pytest.raises(ConfigError, match="is the key the certificate's"):
        server_context(str(d / "ca.pem"), str(d / "server.key"))


# --------------------------------------------------------------------------- listen policy


@pytest.mark.parametrize(
    ("host", "loop"),
    [("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("LocalHost", True), ("0.0.0.0", False), ("::", False), ("", False),
     ("10.0.0.5", False), ("ctl.example.org", False), ("localhost.evil.org", False)],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_plaintext_off_loopback_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        check_listen(ControllerConfig(host="0.0.0.0"))
    msg = str(info.value)
    assert "0.0.0.0" in msg
    for fix in ("--tls-cert", "--tls-key", "tidewater dev-cert", "--allow-plaintext", "127.0.0.1"):
        assert fix in msg


@pytest.mark.parametrize(
    "cfg",
    [ControllerConfig(), ControllerConfig(host="::1"),
     ControllerConfig(host="0.0.0.0", allow_plaintext=True),
     ControllerConfig(host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem")],
)
def test_loopback_tls_or_explicit_plaintext_is_allowed(cfg: ControllerConfig) -> None:
    check_listen(cfg)


@pytest.mark.parametrize(("cert", "key", "missing"),
                         [("c.pem", "", "--tls-key"), ("", "k.pem", "--tls-cert")])
def test_cert_without_key_is_refused(cert: str, key: str, missing: str) -> None:
    with pytest.raises(ConfigError, match=f"without {missing}"):
        check_listen(ControllerConfig(tls_cert=cert, tls_key=key))


def test_tls_error_is_a_connection_error_never_retried() -> None:
    exc = TLSError("wss://h:1/ws", "the server's certificate could not be verified")
    assert isinstance(exc, ConnectionError_)
    assert not is_retryable(exc)
    assert (exc.url, str(exc)) == (
        "wss://h:1/ws", "TLS with wss://h:1/ws failed: the server's certificate could not be verified")


# --------------------------------------------------------------------------- site settings


def test_site_ca_file_is_relative_to_the_site_and_passed_to_pilots(tmp_path: Path) -> None:
    d = init_site(tmp_path / "site", name="hpc", scheduler="slurm",
                  controller="wss://ctl.example.org:8765", token="t", ca_file="ca.pem")
    s = load(d)
    assert s.ca_file() == str(d / "ca.pem")
    argv = pilot_argv(s, job_id=3, token_file="tok", head=False)
    i = argv.index("--ca-file")
    # A global option: it must come before the `pilot` subcommand.
    assert argv[i + 1] == str(d / "ca.pem") and i < argv.index("pilot")


def test_site_without_ca_file_uses_the_system_store(tmp_path: Path) -> None:
    s = load(init_site(tmp_path / "site", name="hpc", scheduler="local",
                       controller="ws://127.0.0.1:8765", token="t"))
    assert s.ca_file() is None
    assert "--ca-file" not in pilot_argv(s, job_id=1, token_file="tok", head=True)
