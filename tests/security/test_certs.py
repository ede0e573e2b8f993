"""The private PKI (orchestrator.security.certs): names, CA, leaf certificates, CSR signing, and
the files ``sgctl certs init`` / ``issue`` lay out."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator.errors import InvalidSpecError
from orchestrator.security.certs import (
    API_SERVER_NAME,
    CONTROL_PLANE_NAME,
    MAX_CSR_BYTES,
    TRUST_DOMAIN,
    certificate_dns_names,
    certificate_not_after,
    create_ca,
    generate_key,
    issue_certificate,
    make_csr,
    sign_csr,
    site_server_name,
    write_dev_pki,
    write_site_certificate,
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def is_ca(cert: x509.Certificate) -> bool:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca("test CA", days=30)


# -- names ----------------------------------------------------------------------------------------


def test_names() -> None:
    assert TRUST_DOMAIN == "sovereign-grid"
    assert CONTROL_PLANE_NAME == "control-plane.sovereign-grid"
    assert API_SERVER_NAME == "api.sovereign-grid"
    assert site_server_name("narvik") == "narvik.site.sovereign-grid"
    assert site_server_name("a" * 63) == f"{'a' * 63}.site.sovereign-grid"
    assert site_server_name("0-x") == "0-x.site.sovereign-grid"


@pytest.mark.parametrize(
    "bad",
    ["", "Narvik", "-narvik", "a" * 64, "narvik\n", "nar.vik", "nar vik", "*", "narvík", "a/b"],
)
def test_site_server_name_refuses_what_is_not_a_site_id(bad: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        site_server_name(bad)
    assert info.value.field == "site_id"


# -- CA and leaves --------------------------------------------------------------------------------


def test_create_ca_is_a_self_signed_ca(ca: tuple[bytes, bytes]) -> None:
    cert = load(ca[0])
    assert is_ca(cert)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    key = serialization.load_pem_private_key(ca[1], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()
    lifetime = cert.not_valid_after_utc - now()
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)


def test_issue_certificate_names_usages_and_chain(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_certificate(
        *ca,
        common_name="api.sovereign-grid",
        dns_names=["api.sovereign-grid", "grid.example.org"],
        ip_addresses=["127.0.0.1", "::1"],
        days=10,
    )
    cert = load(cert_pem)
    cert.verify_directly_issued_by(load(ca[0]))
    assert not is_ca(cert)
    assert common_name(cert) == "api.sovereign-grid"
    assert certificate_dns_names(cert_pem) == ["api.sovereign-grid", "grid.example.org"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == cert.public_key()
    assert key_pem != ca[1]

    client = load(
        issue_certificate(
            *ca,
            common_name=CONTROL_PLANE_NAME,
            dns_names=[CONTROL_PLANE_NAME],
            server_auth=False,
            client_auth=True,
            days=1,
        )[0]
    )
    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_not_before_makes_an_expired_certificate(ca: tuple[bytes, bytes]) -> None:
    start = now() - dt.timedelta(days=10)
    cert_pem, _ = issue_certificate(
        *ca, common_name="x", dns_names=["x.sovereign-grid"], days=1, not_before=start
    )
    assert certificate_not_after(cert_pem) == (start + dt.timedelta(days=1)).replace(microsecond=0)
    assert certificate_not_after(cert_pem) < now()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"days": 0}, "days"),
        ({"dns_names": []}, "dns_names"),
        ({"dns_names": ["has space.example"]}, "dns_names"),
        ({"ip_addresses": ["300.1.1.1"]}, "ip_addresses"),
        ({"server_auth": False, "client_auth": False}, "server_auth"),
    ],
)
def test_issue_certificate_refuses_bad_options(
    ca: tuple[bytes, bytes], options: dict[str, object], field: str
) -> None:
    kwargs: dict[str, object] = {"common_name": "x", "dns_names": ["x.sovereign-grid"], "days": 1}
    kwargs.update(options)
    with pytest.raises(InvalidSpecError) as info:
        issue_certificate(*ca, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_key_that_is_not_the_cas_is_refused(ca: tuple[bytes, bytes]) -> None:
    with pytest.raises(InvalidSpecError, match="not the key of the CA"):
        issue_certificate(ca[0], generate_key(), common_name="x", dns_names=["x"], days=1)


# -- CSR signing ----------------------------------------------------------------------------------


def greedy_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR asking for everything: the control plane's name, a wildcard, an address, and CA."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CONTROL_PLANE_NAME)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(CONTROL_PLANE_NAME),
                    x509.DNSName("*.site.sovereign-grid"),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_sign_csr_ignores_the_names_it_asks_for(ca: tuple[bytes, bytes]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = sign_csr(*ca, greedy_csr(key).decode(), site_id="narvik", days=7)
    cert = load(cert_pem)
    cert.verify_directly_issued_by(load(ca[0]))
    assert common_name(cert) == "narvik.site.sovereign-grid"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("narvik.site.sovereign-grid")]
    assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert not is_ca(cert)
    assert cert.public_key() == key.public_key()
    assert certificate_not_after(cert_pem) - now() <= dt.timedelta(days=7)


def test_sign_csr_of_make_csr(ca: tuple[bytes, bytes]) -> None:
    key_pem = generate_key()
    cert_pem = sign_csr(*ca, make_csr(key_pem), site_id="oslo-2")
    assert certificate_dns_names(cert_pem) == ["oslo-2.site.sovereign-grid"]
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert load(cert_pem).public_key() == key.public_key()
    assert (
        dt.timedelta(days=364) < certificate_not_after(cert_pem) - now() <= dt.timedelta(days=365)
    )


def tampered_csr() -> bytes:
    """A well-formed CSR whose subject was changed after it was signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "honest")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    assert der.count(b"honest") == 1
    forged = x509.load_der_x509_csr(der.replace(b"honest", b"forged"))
    return forged.public_bytes(serialization.Encoding.PEM)


def csr_for(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("csr", "problem"),
    [
        (b"", "not a PEM certificate request"),
        (b"hello world", "not a PEM certificate request"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "cannot be parsed",
        ),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * MAX_CSR_BYTES, "larger than 16384"),
        (tampered_csr(), "signature does not match"),
        (csr_for(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "1024 bits"),
        (csr_for(ec.generate_private_key(ec.SECP521R1())), "secp521r1"),
        (csr_for(ed25519.Ed25519PrivateKey.generate()), "ECDSA (P-256, P-384) or RSA"),
    ],
    ids=["empty", "text", "bad-body", "oversized", "tampered", "rsa-1024", "p-521", "ed25519"],
)
def test_sign_csr_refuses_bad_csrs(ca: tuple[bytes, bytes], csr: bytes, problem: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        sign_csr(*ca, csr, site_id="narvik")
    assert info.value.field == "csr_pem"
    assert problem in info.value.problem


def test_sign_csr_accepts_rsa_2048_and_p384(ca: tuple[bytes, bytes]) -> None:
    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
    ):
        cert = load(sign_csr(*ca, csr_for(key), site_id="narvik"))
        assert cert.public_key() == key.public_key()


def test_sign_csr_refuses_a_bad_site_id(ca: tuple[bytes, bytes]) -> None:
    with pytest.raises(InvalidSpecError) as info:
        sign_csr(*ca, make_csr(generate_key()), site_id="../etc")
    assert info.value.field == "site_id"


# -- files ----------------------------------------------------------------------------------------

PKI_FILES = {
    "ca.pem", "ca-key.pem", "control-plane.pem", "control-plane-key.pem", "api.pem", "api-key.pem",
}  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_write_dev_pki_writes_the_layout(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    written = write_dev_pki(d, api_hosts=("grid.example.org", "10.1.2.3"), days=3)
    assert set(written) == PKI_FILES
    assert {p.name for p in d.iterdir()} == PKI_FILES  # no temporary files left behind
    assert all(path == d / name for name, path in written.items())
    for name in PKI_FILES:
        assert mode(d / name) == (0o600 if name.endswith("-key.pem") else 0o644), name
    ca = load((d / "ca.pem").read_bytes())
    control, api = load((d / "control-plane.pem").read_bytes()), load((d / "api.pem").read_bytes())
    for leaf in (control, api):
        leaf.verify_directly_issued_by(ca)
    assert certificate_dns_names((d / "control-plane.pem").read_bytes()) == [CONTROL_PLANE_NAME]
    assert usages(control) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert certificate_dns_names((d / "api.pem").read_bytes()) == [
        API_SERVER_NAME,
        "grid.example.org",
    ]
    api_ips = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert api_ips.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert usages(api) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_write_dev_pki_defaults_name_localhost(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    api = load((tmp_path / "api.pem").read_bytes())
    san = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [API_SERVER_NAME, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_write_dev_pki_is_idempotent_and_fills_gaps(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    before = snapshot(tmp_path)
    assert write_dev_pki(tmp_path) == {}
    assert snapshot(tmp_path) == before

    (tmp_path / "api-key.pem").unlink()
    written = write_dev_pki(tmp_path)
    assert set(written) == {"api.pem", "api-key.pem"}
    after = snapshot(tmp_path)
    for name in ("ca.pem", "ca-key.pem", "control-plane.pem", "control-plane-key.pem"):
        assert after[name] == before[name], name
    assert after["api.pem"] != before["api.pem"]
    load(after["api.pem"]).verify_directly_issued_by(load(after["ca.pem"]))


def test_write_dev_pki_force_replaces_the_ca(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    before = snapshot(tmp_path)
    assert set(write_dev_pki(tmp_path, force=True)) == PKI_FILES
    after = snapshot(tmp_path)
    assert all(after[name] != before[name] for name in PKI_FILES)
    load(after["control-plane.pem"]).verify_directly_issued_by(load(after["ca.pem"]))


def test_write_dev_pki_without_the_ca_key_cannot_fill_gaps(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    (tmp_path / "ca-key.pem").unlink()
    assert write_dev_pki(tmp_path) == {}  # nothing missing: the key is not needed
    (tmp_path / "api.pem").unlink()
    with pytest.raises(InvalidSpecError, match=r"ca-key\.pem"):
        write_dev_pki(tmp_path)


def test_write_site_certificate(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    cert_path, key_path = write_site_certificate(tmp_path, "narvik", days=2)
    assert (cert_path, key_path) == (
        tmp_path / "sites" / "narvik.pem",
        tmp_path / "sites" / "narvik-key.pem",
    )
    assert (mode(cert_path), mode(key_path)) == (0o644, 0o600)
    cert = load(cert_path.read_bytes())
    cert.verify_directly_issued_by(load((tmp_path / "ca.pem").read_bytes()))
    assert certificate_dns_names(cert_path.read_bytes()) == ["narvik.site.sovereign-grid"]
    assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    # issuing again renews: a new key and certificate
    first = cert_path.read_bytes()
    write_site_certificate(tmp_path, "narvik")
    assert cert_path.read_bytes() != first


def test_write_site_certificate_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError) as info:
        write_site_certificate(tmp_path, "narvik")
    assert str(tmp_path) in info.value.problem
    assert "sgctl certs init" in info.value.problem
    assert not (tmp_path / "sites").exists()


def test_write_site_certificate_refuses_a_bad_site_id(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    with pytest.raises(InvalidSpecError) as info:
        write_site_certificate(tmp_path, "../../escape")
    assert info.value.field == "site_id"
    assert not (tmp_path / "sites").exists()
