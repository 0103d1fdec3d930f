"""`hakuriver.init tls` and hakuriver.tls: the cluster CA, node certificates, and the
checks a service runs on its [tls] files before it serves."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from hakuriver import tls
from hakuriver.cli import init
from hakuriver.cli.init import main
from hakuriver.config import TlsConfig
from hakuriver.errors import ConfigError


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a key created without an explicit mode would be world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans_of(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(a) for a in ext.get_values_for_type(x509.IPAddress)]


def test_ca_then_cert_round_trip_with_0600_keys(
    tmp_path: Path, open_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "ca"
    assert main(["tls", "ca", "--dir", str(ca_dir)]) == 0
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "ca-key.pem") == 0o600 and mode(ca_dir / "ca.pem") == 0o644
    out = capsys.readouterr().out
    assert "ca-key.pem (mode 0600" in out and "hakuriver.init tls cert NAME" in out

    assert main(["tls", "cert", "gpu1", "--dir", str(ca_dir), "--ip", "10.0.0.11", "--dns", "gpu1.lab"]) == 0
    assert mode(ca_dir / "gpu1-key.pem") == 0o600 and mode(ca_dir / "gpu1.pem") == 0o644
    out = capsys.readouterr().out
    assert f'cert_file = "{ca_dir / "gpu1.pem"}"' in out and "enabled = true" in out

    ca, node = cert_of(ca_dir / "ca.pem"), cert_of(ca_dir / "gpu1.pem")
    node.verify_directly_issued_by(ca)
    assert sans_of(node) == (["gpu1", "gpu1.lab"], ["10.0.0.11"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert node.not_valid_after_utc <= ca.not_valid_after_utc
    # The pair loads as a server context, checked against the CA.
    config = TlsConfig(
        enabled=True,
        ca_file=str(ca_dir / "ca.pem"),
        cert_file=str(ca_dir / "gpu1.pem"),
        key_file=str(ca_dir / "gpu1-key.pem"),
    )
    assert isinstance(tls.server_context(config), ssl.SSLContext)
    context = tls.client_context(config)
    assert context is not None and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_nothing_is_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    assert main(["tls", "ca", "--dir", str(ca_dir)]) == 0
    assert main(["tls", "cert", "n1", "--dir", str(ca_dir)]) == 0
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    capsys.readouterr()

    assert main(["tls", "ca", "--dir", str(ca_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "stops being trusted" in err
    assert main(["tls", "cert", "n1", "--dir", str(ca_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n1.pem" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before

    assert main(["tls", "cert", "n1", "--dir", str(ca_dir), "--force"]) == 0
    assert (ca_dir / "n1.pem").read_bytes() != before["n1.pem"]
    assert main(["tls", "ca", "--dir", str(ca_dir), "--force"]) == 0
    assert (ca_dir / "ca-key.pem").read_bytes() != before["ca-key.pem"]


def test_out_dir_and_an_ip_as_the_name(tmp_path: Path) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    assert main(["tls", "ca", "--dir", str(ca_dir)]) == 0
    assert main(["tls", "cert", "10.1.2.3", "--dir", str(ca_dir), "--out-dir", str(out), "--ip", "::1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["10.1.2.3-key.pem", "10.1.2.3.pem"]
    assert sans_of(cert_of(out / "10.1.2.3.pem")) == ([], ["10.1.2.3", "::1"])
    assert not (ca_dir / "10.1.2.3.pem").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tls", "cert", "a/b"], "NAME: 'a/b' is not a node name"),
        (["tls", "cert", "ca"], "clash"),
        (["tls", "cert", "n1-key"], "clash"),
        (["tls", "cert", "n1", "--ip", "300.0.0.1"], "--ip: '300.0.0.1' is not an IP address"),
        (["tls", "cert", "n1", "--dns", "bad name"], "--dns: 'bad name' is not a DNS name"),
        (["tls", "cert", "n1", "--days", "0"], "must be 1 to 36500 days"),
    ],
)
def test_bad_input_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_cert_without_a_ca_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tls", "cert", "n1", "--dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CA in" in err and "hakuriver.init tls ca --dir" in err


def test_parser_defaults_match_the_module() -> None:
    parser = init.build_parser()
    assert parser.parse_args(["tls", "ca", "--dir", "x"]).days == tls.CA_DAYS
    assert parser.parse_args(["tls", "cert", "n", "--dir", "x"]).days == tls.CERT_DAYS


# ------------------------------------------------------------ service checks
@pytest.fixture
def pki(tmp_path: Path) -> Path:
    tls.write_ca(tmp_path)
    tls.write_node_cert(tmp_path, "node", ips=["127.0.0.1"])
    return tmp_path


def _tls(pki: Path, **overrides: str) -> TlsConfig:
    values = {
        "ca_file": str(pki / "ca.pem"),
        "cert_file": str(pki / "node.pem"),
        "key_file": str(pki / "node-key.pem"),
        **overrides,
    }
    return TlsConfig(enabled=True, **values)


def _refused(config: TlsConfig) -> str:
    with pytest.raises(ConfigError) as info:
        tls.server_context(config, "/etc/hakuriver/config.toml")
    message = info.value.message
    assert "\n" not in message
    return message


def test_server_context_refusals_are_one_clear_line(pki: Path, tmp_path: Path) -> None:
    assert "tls.cert_file and tls.key_file are not set in /etc/hakuriver/config.toml" in _refused(
        _tls(pki, cert_file="", key_file="")
    )
    assert "tls.key_file is not set" in _refused(_tls(pki, key_file=""))
    assert _refused(_tls(pki, cert_file=str(pki / "gone.pem"))) == f"tls.cert_file: {pki / 'gone.pem'} does not exist"
    assert "is a directory" in _refused(_tls(pki, key_file=str(pki)))
    assert "holds no PEM certificate" in _refused(_tls(pki, cert_file=str(pki / "node-key.pem")))
    assert "holds no PEM private key" in _refused(_tls(pki, key_file=str(pki / "node.pem")))
    # A key of another pair.
    tls.write_node_cert(pki, "other")
    assert _refused(_tls(pki, key_file=str(pki / "other-key.pem"))) == (
        f"tls.key_file {pki / 'other-key.pem'} is not the key of tls.cert_file {pki / 'node.pem'}"
    )
    # A certificate of another CA.
    elsewhere = tmp_path / "elsewhere"
    tls.write_ca(elsewhere)
    assert "is not signed by the CA in tls.ca_file" in _refused(_tls(pki, ca_file=str(elsewhere / "ca.pem")))


def test_expired_certificate_is_refused(pki: Path) -> None:
    ca_key, ca_cert = tls.load_ca(pki)
    key, cert = tls.make_node_cert(ca_key, ca_cert, "old")
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC))
    )
    from cryptography.hazmat.primitives import hashes

    expired = builder.sign(ca_key, hashes.SHA256())
    (pki / "old.pem").write_text(tls.cert_pem(expired))
    (pki / "old-key.pem").write_text(tls.key_pem(key))
    os.chmod(pki / "old-key.pem", 0o600)
    message = _refused(_tls(pki, cert_file=str(pki / "old.pem"), key_file=str(pki / "old-key.pem")))
    assert message == f"tls.cert_file {pki / 'old.pem'} expired on 2021-01-01"


def test_a_key_readable_by_others_is_warned_about(pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(pki / "node-key.pem", 0o644)
    with caplog.at_level(logging.WARNING, logger="hakuriver.tls"):
        tls.server_context(_tls(pki))
    assert any("readable by others (mode 0644)" in r.getMessage() for r in caplog.records)


def test_client_context(pki: Path) -> None:
    assert tls.client_context(TlsConfig()) is None
    system = tls.client_context(TlsConfig(enabled=True))
    assert system is not None and system.check_hostname  # the system's trust store
    with pytest.raises(ConfigError, match=r"^tls.ca_file: .*/none.pem does not exist$"):
        tls.client_context(_tls(pki, ca_file=str(pki / "none.pem")))
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        tls.client_context(_tls(pki, ca_file=str(pki / "node-key.pem")))


def test_subject_alt_names_dedupe_and_classify() -> None:
    dns, ips = tls.subject_alt_names("Head.Lab", ["head.lab", "head"], ["10.0.0.1", "[::1]", "10.0.0.1"])
    assert dns == ["head.lab", "head"]
    assert ips == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
