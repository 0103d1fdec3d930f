"""HTTPS with a cluster CA: making the CA and node certificates, and the SSL contexts.

Trust model (the `[tls]` section, see README "HTTPS"):

- One cluster CA (`ca.pem`, `ca-key.pem`) signs one certificate per node. Its
  key stays where it was made (the Host, with the Ansible roles); only
  `ca.pem` is handed out.
- The Host and every Runner serve HTTPS with their node certificate
  (`server_context`). No client certificates: the tokens authenticate callers.
- Whoever connects verifies the server against the CA and checks the name it
  dialled (`client_context`): the CLIs and the Runners verify the Host at
  `network.host_reachable_address`, the Host verifies each Runner at the
  address it registered (`network.runner_address`). So those addresses must be
  in the certificates' subjectAltNames.

Making things (`make_ca`, `make_node_cert`, `write_*`) is pure apart from the
files written; private keys are created mode 0600 from the first byte
(`safefiles.write_file`). Loading things raises `ConfigError` with one line that
names the setting and the file.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError
from .safefiles import write_file

if TYPE_CHECKING:
    from .config import Config, TlsConfig

log = logging.getLogger(__name__)

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650
"""The CA's validity: ten years (a lab cluster should not meet a surprise expiry)."""
CERT_DAYS = 1825
"""A node certificate's validity: five years, and never past the CA's."""
EXPIRY_WARNING_DAYS = 30
CA_NAME = "HakuRiver cluster CA"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


# ------------------------------------------------------------------ names
def check_cert_name(name: str) -> str:
    """A certificate's NAME: it names the files NAME.pem and NAME-key.pem too."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not a node name (letters, digits, '.', '_', '-'; starting with a letter or digit)"
        )
    if name == "ca" or name.endswith("-key"):
        raise ValueError(f"{name!r} would clash with the CA's or a key's file name")
    return name


def check_dns_name(name: str) -> str:
    if len(name) > 253 or not _DNS_RE.match(name):
        raise ValueError(f"{name!r} is not a DNS name")
    return name.rstrip(".").lower()


def check_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def subject_alt_names(
    name: str, dns: Iterable[str] = (), ips: Iterable[str] = ()
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """The DNS names and IP addresses a node certificate is valid for: NAME itself
    (as an IP address when it is one, else as a DNS name) plus the ones given,
    each once, in order."""
    dns_names: list[str] = []
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        addresses.append(ipaddress.ip_address(name))
    except ValueError:
        dns_names.append(check_dns_name(name))
    for value in dns:
        checked = check_dns_name(value)
        if checked not in dns_names:
            dns_names.append(checked)
    for value in ips:
        address = check_ip(value)
        if address not in addresses:
            addresses.append(address)
    return dns_names, addresses


# ----------------------------------------------------------------- making
def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(*, days: int = CA_DAYS, common_name: str = CA_NAME) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA: (private key, self-signed certificate)."""
    if days < 1:
        raise ValueError("the CA must be valid for at least one day")
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_node_cert(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    name: str,
    *,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int = CERT_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A node's (private key, certificate), signed by the CA, for TLS servers
    (and clients), valid for NAME and the given DNS names and IP addresses."""
    if days < 1:
        raise ValueError("a certificate must be valid for at least one day")
    dns_names, addresses = subject_alt_names(name, dns, ips)
    key = new_key()
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def key_pem(key: PrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# ------------------------------------------------------------------ files
@dataclass(frozen=True)
class Written:
    cert: Path
    key: Path
    not_after: datetime.datetime
    sans: tuple[str, ...] = ()


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(", ".join(existing))


def write_public_file(path: Path, text: str, *, overwrite: bool) -> None:
    """`text` to `path`, mode 0644, atomically (a temp file renamed over it)."""
    write_file(path, text, mode=0o644, overwrite=overwrite)


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: PrivateKeyTypes, overwrite: bool) -> None:
    _refuse_existing([cert_path, key_path], overwrite)
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(key_path, key_pem(key), mode=0o600, overwrite=overwrite)
    write_public_file(cert_path, cert_pem(cert), overwrite=overwrite)


def write_ca(directory: Path, *, overwrite: bool = False, days: int = CA_DAYS) -> Written:
    """Make a CA in `directory` (created 0700 when missing): ca.pem and ca-key.pem (0600).
    Either file existing raises FileExistsError unless `overwrite`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _refuse_existing([cert_path, key_path], overwrite)
    key, cert = make_ca(days=days)
    _write_pair(cert_path, key_path, cert, key, overwrite)
    return Written(cert=cert_path, key=key_path, not_after=cert.not_valid_after_utc)


def load_ca(directory: Path) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """The CA's (key, certificate) from `directory`; ConfigError when missing or broken."""
    cert = load_cert(directory / CA_CERT, "the CA certificate")
    key = load_key(directory / CA_KEY, "the CA key")
    if not _same_public_key(cert, key):
        raise ConfigError(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{directory / CA_KEY} is a {type(key).__name__}, which cannot sign certificates")
    return key, cert


def write_node_cert(
    directory: Path,
    name: str,
    *,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int = CERT_DAYS,
    overwrite: bool = False,
    out_dir: Path | None = None,
) -> Written:
    """Sign NAME.pem and NAME-key.pem (0600) with the CA in `directory`, into
    `out_dir` (default: `directory`)."""
    check_cert_name(name)
    out = out_dir or directory
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    _refuse_existing([cert_path, key_path], overwrite)
    ca_key, ca_cert = load_ca(directory)
    if ca_cert.not_valid_after_utc <= _now():
        raise ConfigError(f"the CA in {directory / CA_CERT} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}")
    key, cert = make_node_cert(ca_key, ca_cert, name, dns=dns, ips=ips, days=days)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_pair(cert_path, key_path, cert, key, overwrite)
    dns_names, addresses = subject_alt_names(name, dns, ips)
    return Written(
        cert=cert_path,
        key=key_path,
        not_after=cert.not_valid_after_utc,
        sans=tuple(dns_names) + tuple(str(a) for a in addresses),
    )


# ---------------------------------------------------------------- loading
def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def load_cert(path: Path, what: str) -> x509.Certificate:
    """The first certificate in a PEM file."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{what}: {path} holds no PEM certificate")
    return certs[0]


def load_key(path: Path, what: str) -> PrivateKeyTypes:
    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{what}: {path} is encrypted with a passphrase; HakuRiver needs an unencrypted key"
        ) from None
    except ValueError:
        raise ConfigError(f"{what}: {path} holds no PEM private key") from None


def _same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _path(value: str) -> Path:
    return Path(os.path.expanduser(value))


def _where(source: str | None) -> str:
    return source or "the config"


def server_context(tls: TlsConfig, source: str | None = None) -> ssl.SSLContext:
    """The context a service serves HTTPS with: `tls.cert_file` and `tls.key_file`,
    checked first (present, readable, a matching pair, in date, and signed by
    `tls.ca_file` when that is set) so that a mistake is one clear line at start."""
    missing = [k for k in ("cert_file", "key_file") if not getattr(tls, k)]
    if missing:
        names = " and ".join(f"tls.{k}" for k in missing)
        raise ConfigError(
            f"tls.enabled is true but {names} {'is' if len(missing) == 1 else 'are'} not set in {_where(source)} "
            "(hakuriver.init tls cert NAME makes a certificate)"
        )
    cert_path, key_path = _path(tls.cert_file), _path(tls.key_file)
    cert = load_cert(cert_path, "tls.cert_file")
    key = load_key(key_path, "tls.key_file")
    if not _same_public_key(cert, key):
        raise ConfigError(f"tls.key_file {key_path} is not the key of tls.cert_file {cert_path}")
    now = _now()
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"tls.cert_file {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"tls.cert_file {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}")
    if tls.ca_file:
        ca_path = _path(tls.ca_file)
        ca = load_cert(ca_path, "tls.ca_file")
        if not _issued_by(cert, ca):
            raise ConfigError(f"tls.cert_file {cert_path} is not signed by the CA in tls.ca_file {ca_path}")
    if cert.not_valid_after_utc - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        log.warning(
            "tls.cert_file %s expires on %s: make a new one (hakuriver.init tls cert NAME --force)",
            cert_path,
            f"{cert.not_valid_after_utc:%Y-%m-%d}",
        )
    try:
        mode = key_path.stat().st_mode
    except OSError:
        mode = 0
    if mode & 0o077:
        log.warning("tls.key_file %s is readable by others (mode %04o); make it 0600", key_path, mode & 0o777)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.cert_file {cert_path} / tls.key_file {key_path}: {exc}") from None
    return context


def client_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The context for connecting to a HakuRiver service: None with TLS off; else
    certificates verified against `tls.ca_file` (the system's trust store when
    empty) and the host name checked."""
    if not tls.enabled:
        return None
    if not tls.ca_file:
        context = ssl.create_default_context()
    else:
        ca_path = _path(tls.ca_file)
        load_cert(ca_path, "tls.ca_file")  # a clear line for a missing or broken file
        try:
            context = ssl.create_default_context(cafile=str(ca_path))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls.ca_file {ca_path}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def service_contexts(config: Config) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """A service's (server, client) contexts, both checked now; (None, None) with TLS off."""
    if not config.tls.enabled:
        return None, None
    return server_context(config.tls, config.source), client_context(config.tls)


PLAIN_HTTP_WARNING = (
    "tls.enabled is false: the API, and the tokens on it, travel as plain HTTP. That is fit only for "
    "a one-machine setup or a trusted network; see README, 'HTTPS' (hakuriver.init tls)"
)
