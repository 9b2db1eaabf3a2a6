"""TLS: the controller's server context, the peers' client context, development certificates.

A controller listening outside loopback serves ``wss://`` with a certificate
(``--tls-cert``/``--tls-key``); clients, agents and pilots verify it against
a CA file (``--ca-file``, ``TIDEWATER_CA_FILE``, ``ca_file`` in a site's
settings) or the system trust store, with hostname checking on. TLS 1.2 is
the minimum on both sides.

:func:`issue_dev_cert` makes a throw-away CA and a server certificate signed
by it (``tidewater dev-cert DIR``); it is pure but for the key generation's
randomness. :func:`write_dev_cert` puts the result on disk, private key mode
0600. The CA's private key is never written: the CA can vouch for this one
server certificate and nothing else, so trusting ``ca.pem`` trusts only it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import ControllerConfig
from .errors import ConfigError

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
LOOPBACK_NAMES = ("localhost",)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


# ---------------------------------------------------------------------- listening


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the socket on this machine (127/8, ::1, localhost).

    An empty host (every interface) and any other name count as outside:
    a name is not resolved here, so only ``localhost`` is taken on trust.
    """
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_listen(config: ControllerConfig) -> None:
    """Refuse a listener that would carry tokens in the clear off this machine.

    Raises :class:`ConfigError` (saying which flags fix it) when only one of
    the certificate and key is given, or when the host is not loopback, TLS
    is off and ``allow_plaintext`` was not asked for.
    """
    if bool(config.tls_cert) != bool(config.tls_key):
        given, missing = (("--tls-cert", "--tls-key") if config.tls_cert
                          else ("--tls-key", "--tls-cert"))
        raise ConfigError(f"{given} was given without {missing}: TLS needs both the "
                          "certificate and its private key")
    if config.dashboard_port is not None and not (
            config.tls_cert or config.allow_plaintext or is_loopback(config.dashboard_host)):
        raise ConfigError(
            f"refusing to serve the dashboard over plaintext http on "
            f"{config.dashboard_host or 'every interface'!r}, which is not a loopback address: "
            "its login token and session cookie would cross the network in the clear. Serve "
            "TLS with --tls-cert FILE --tls-key FILE, use --dashboard-host 127.0.0.1, or pass "
            "--allow-plaintext if something else protects the traffic")
    if config.tls_cert or config.allow_plaintext or is_loopback(config.host):
        return
    raise ConfigError(
        f"refusing to serve plaintext ws:// on {config.host or 'every interface'!r}, which is "
        "not a loopback address: tokens would cross the network in the clear. Serve TLS with "
        "--tls-cert FILE --tls-key FILE (`tidewater dev-cert DIR` makes a development pair), "
        "listen on 127.0.0.1, or pass --allow-plaintext if something else (a TLS proxy, an "
        "SSH tunnel) protects the traffic"
    )


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The controller's TLS context. ConfigError if the files are missing or do not match.

    Blocking (reads files): call it from a thread in async code.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS file {exc.filename or cert_file} not found "
                          "(--tls-cert / --tls-key)") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert_file} with key {key_file}: "
                          f"{exc} (are both PEM, and is the key the certificate's?)") from None
    return ctx


def client_context(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A context that verifies the controller: against ``ca_file`` alone, else the system store.

    Hostname checking is on; TLS 1.2 is the minimum. ConfigError if the CA
    file is missing or holds no certificate. Blocking (reads files): call it
    from a thread in async code.
    """
    path = os.fspath(ca_file) if ca_file else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=path)
    except FileNotFoundError:
        raise ConfigError(f"CA file {path} not found (--ca-file, TIDEWATER_CA_FILE or a "
                          "site's ca_file)") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CA file {path}: {exc} (it must hold PEM "
                          "certificates, such as the ca.pem of `tidewater dev-cert`)") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# ---------------------------------------------------------------------- dev certificates


@dataclass(frozen=True)
class DevCert:
    """A development CA certificate and a server certificate + key it signed (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    names: tuple[str, ...]


def dev_cert_names(hostname: str, hosts: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The SANs of a development certificate: loopback, ``hostname`` and ``hosts``, once each."""
    names: list[str] = []
    for n in ("localhost", "127.0.0.1", "::1", hostname, *hosts):
        n = n.strip().strip("[]")
        if n and n.lower() not in (m.lower() for m in names):
            names.append(n)
    return names


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        ascii_name = name.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if not ascii_name or len(ascii_name) > 253 or not all(
            _LABEL.match(label) for label in ascii_name.split(".")):
        raise ConfigError(f"{name!r} is neither an IP address nor a valid host name")
    return x509.DNSName(ascii_name)


def issue_dev_cert(names: list[str], *, now: dt.datetime, days: int = 825) -> DevCert:
    """A new CA and a server certificate for ``names`` (DNS names or IPs), valid ``days``.

    ConfigError if there is no name or a name is not a host name or an IP.
    """
    if not names:
        raise ConfigError("a certificate needs at least one host name")
    sans = [_san(n) for n in names]
    common = next((n for n in names if not is_loopback(n)), names[0])[:64]
    start = now - dt.timedelta(minutes=5)  # tolerate a little clock skew between hosts
    end = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidewater development"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Tidewater development CA for {common}"[:64]),
    ])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tidewater development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return DevCert(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        names=tuple(names),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)  # O_CREAT's mode does not apply to an existing file
        fh.write(data)


def write_dev_cert(directory: str | Path, cert: DevCert, *, force: bool = False) -> list[Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (0600) into ``directory``.

    Returns the paths written. ConfigError if one exists already and not
    ``force`` (replacing a certificate in use breaks every peer that trusts it).
    """
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    files = [(d / CA_FILE, cert.ca_pem, 0o644), (d / CERT_FILE, cert.cert_pem, 0o644),
             (d / KEY_FILE, cert.key_pem, 0o600)]
    if not force:
        for p, _, _ in files:
            if p.exists():
                raise ConfigError(f"{p} exists already: pass --force to replace it (peers "
                                  "trusting the old ca.pem will then refuse the server)")
    for p, data, mode in files:
        _write(p, data, mode)
    return [p for p, _, _ in files]
