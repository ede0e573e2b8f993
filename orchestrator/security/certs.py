"""Certificates of the federation's private PKI: names, a CA, leaf certificates, CSR signing.

Every identity is named by a DNS name under ``TRUST_DOMAIN``, checked on both ends of a TLS
connection instead of a host name or address:

- the control plane (its client identity toward site agents): ``CONTROL_PLANE_NAME``;
- the API server: ``API_SERVER_NAME`` (plus the hosts clients dial it by);
- the agent of site ``narvik``: ``site_server_name("narvik")`` = ``narvik.site.sovereign-grid``.

Keys are ECDSA P-256. ``write_dev_pki`` and ``write_site_certificate`` lay the files out as
``sgctl certs init`` and ``sgctl certs issue`` do (``ca.pem``, ``<name>.pem``,
``<name>-key.pem``, key files mode 0600, each file written atomically).

Pure: no gRPC, no environment. Bad input raises ``InvalidSpecError`` naming the field.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator.errors import InvalidSpecError
from orchestrator.security.files import write_atomically

__all__ = [
    "API_SERVER_NAME",
    "CONTROL_PLANE_NAME",
    "MAX_CSR_BYTES",
    "TRUST_DOMAIN",
    "certificate_dns_names",
    "certificate_not_after",
    "create_ca",
    "generate_key",
    "issue_certificate",
    "make_csr",
    "sign_csr",
    "site_server_name",
    "write_dev_pki",
    "write_site_certificate",
]

TRUST_DOMAIN = "sovereign-grid"
"""The suffix of every name this PKI issues."""
CONTROL_PLANE_NAME = f"control-plane.{TRUST_DOMAIN}"
"""The control plane's client identity; the only caller a site agent accepts."""
API_SERVER_NAME = f"api.{TRUST_DOMAIN}"
"""The API server's name, next to the host names and addresses clients dial."""
MAX_CSR_BYTES = 16 * 1024
"""Largest CSR ``sign_csr`` reads."""

_SITE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CLOCK_SKEW = dt.timedelta(minutes=5)
_MIN_RSA_BITS = 2048
_CSR_CURVES = (ec.SECP256R1, ec.SECP384R1)


def site_server_name(site_id: str) -> str:
    """The DNS name the agent of ``site_id`` presents: ``<site_id>.site.sovereign-grid``."""
    if not isinstance(site_id, str) or not _SITE_ID_RE.fullmatch(site_id):
        shown = repr(site_id)[:42]
        raise InvalidSpecError(
            "site_id", f"{shown} is not a site id (lowercase letters, digits, '-')"
        )
    return f"{site_id}.site.{TRUST_DOMAIN}"


def generate_key() -> bytes:
    """A new ECDSA P-256 private key (PKCS#8 PEM, unencrypted)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key_pem: bytes, *, common_name: str = "site") -> bytes:
    """A certificate signing request (PEM) for ``key_pem``. The names it asks for do not matter:
    the signer decides them (see ``sign_csr``)."""
    key = _load_key(key_pem, "key_pem")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def create_ca(common_name: str, *, days: int) -> tuple[bytes, bytes]:
    """A self-signed CA valid for ``days`` days: (certificate PEM, key PEM)."""
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def issue_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    server_auth: bool = True,
    client_auth: bool = False,
    days: int,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A new key and a certificate for it signed by the CA: (certificate PEM, key PEM).

    ``not_before`` (default: now, less a few minutes of clock skew) starts the validity, which
    lasts ``days`` days from it.
    """
    key_pem = generate_key()
    key = _load_key(key_pem, "key_pem")
    cert = _issue(
        ca_cert_pem,
        ca_key_pem,
        key.public_key(),
        common_name=common_name,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        server_auth=server_auth,
        client_auth=client_auth,
        days=days,
        not_before=not_before,
    )
    return cert, key_pem


def sign_csr(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    csr_pem: str | bytes,
    *,
    site_id: str,
    days: int = 365,
) -> bytes:
    """Sign a site's CSR: a serverAuth certificate whose common name and only DNS name are
    ``site_server_name(site_id)``, whatever names and extensions the CSR asks for (only its
    public key is used, after checking the CSR is signed by the matching private key)."""
    name = site_server_name(site_id)
    raw = csr_pem.encode() if isinstance(csr_pem, str) else bytes(csr_pem)
    if len(raw) > MAX_CSR_BYTES:
        raise InvalidSpecError("csr_pem", f"larger than {MAX_CSR_BYTES} bytes")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in raw:
        raise InvalidSpecError(
            "csr_pem", "not a PEM certificate request (BEGIN CERTIFICATE REQUEST)"
        )
    try:
        csr = x509.load_pem_x509_csr(raw)
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidSpecError("csr_pem", f"cannot be parsed: {exc}") from None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _CSR_CURVES):
            raise InvalidSpecError(
                "csr_pem", f"curve {public_key.curve.name} is not P-256 or P-384"
            )
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise InvalidSpecError(
                "csr_pem", f"RSA key of {public_key.key_size} bits; at least {_MIN_RSA_BITS}"
            )
    else:
        raise InvalidSpecError("csr_pem", "the key must be ECDSA (P-256, P-384) or RSA")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise InvalidSpecError("csr_pem", "its signature does not match its public key")
    return _issue(
        ca_cert_pem,
        ca_key_pem,
        public_key,
        common_name=name,
        dns_names=[name],
        server_auth=True,
        client_auth=False,
        days=days,
    )


def certificate_dns_names(cert_pem: bytes) -> list[str]:
    """The DNS names in the subject alternative names of the (first) certificate in ``cert_pem``."""
    cert = _load_cert(cert_pem, "certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.DNSName))


def certificate_not_after(cert_pem: bytes) -> dt.datetime:
    """When the (first) certificate in ``cert_pem`` expires (UTC)."""
    return _load_cert(cert_pem, "certificate").not_valid_after_utc


def write_dev_pki(
    directory: str | os.PathLike[str],
    *,
    api_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
    force: bool = False,
) -> dict[str, Path]:
    """Write a CA and the control plane's certificates into ``directory``; return the files
    written (file name -> path), which is none when everything was already there.

    Files: ``ca.pem`` and ``ca-key.pem``; ``control-plane.pem`` and ``control-plane-key.pem``
    (client certificate, ``CONTROL_PLANE_NAME``); ``api.pem`` and ``api-key.pem`` (server
    certificate, ``API_SERVER_NAME`` and ``api_hosts``, addresses as IP names).

    An existing CA is kept unless ``force``: then only missing certificates are issued, by it.
    """
    _check_days(days)
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    ca_path, ca_key_path = d / "ca.pem", d / "ca-key.pem"
    new_ca = force or not ca_path.exists()
    if new_ca:
        ca_pem, ca_key_pem = create_ca(f"{TRUST_DOMAIN} CA", days=days)
        # the key first: a ca.pem on disk always has its key next to it
        written.update(_write_pair(ca_path, ca_pem, ca_key_path, ca_key_pem))
    else:
        ca_pem = _read(ca_path, "ca")
        ca_key_pem = b""  # read only if a certificate is missing

    def missing(name: str) -> bool:
        return new_ca or not (d / f"{name}.pem").exists() or not (d / f"{name}-key.pem").exists()

    def ca_key() -> bytes:
        nonlocal ca_key_pem
        if not ca_key_pem:
            ca_key_pem = _read(ca_key_path, "ca key")
        return ca_key_pem

    if missing("control-plane"):
        cert, key = issue_certificate(
            ca_pem,
            ca_key(),
            common_name=CONTROL_PLANE_NAME,
            dns_names=[CONTROL_PLANE_NAME],
            server_auth=False,
            client_auth=True,
            days=days,
        )
        written.update(_write_pair(d / "control-plane.pem", cert, d / "control-plane-key.pem", key))
    if missing("api"):
        dns, ips = _split_hosts(api_hosts)
        cert, key = issue_certificate(
            ca_pem,
            ca_key(),
            common_name=API_SERVER_NAME,
            dns_names=[API_SERVER_NAME, *dns],
            ip_addresses=ips,
            server_auth=True,
            client_auth=False,
            days=days,
        )
        written.update(_write_pair(d / "api.pem", cert, d / "api-key.pem", key))
    return written


def write_site_certificate(
    directory: str | os.PathLike[str], site_id: str, *, days: int = 365
) -> tuple[Path, Path]:
    """Issue the agent certificate of ``site_id`` with the CA in ``directory`` (as written by
    ``write_dev_pki``); write ``sites/<site>.pem`` and ``sites/<site>-key.pem``, return them."""
    name = site_server_name(site_id)
    _check_days(days)
    d = Path(directory)
    ca_path, ca_key_path = d / "ca.pem", d / "ca-key.pem"
    missing = [p.name for p in (ca_path, ca_key_path) if not p.is_file()]
    if missing:
        raise InvalidSpecError(
            "dir",
            f"no CA in {d} ({' and '.join(missing)} missing); create one with `sgctl certs init`",
        )
    cert_pem, key_pem = issue_certificate(
        _read(ca_path, "ca"),
        _read(ca_key_path, "ca key"),
        common_name=name,
        dns_names=[name],
        server_auth=True,
        client_auth=False,
        days=days,
    )
    sites = d / "sites"
    sites.mkdir(exist_ok=True)
    cert_path, key_path = sites / f"{site_id}.pem", sites / f"{site_id}-key.pem"
    _write_pair(cert_path, cert_pem, key_path, key_pem)
    return cert_path, key_path


# -- helpers --------------------------------------------------------------------------------------


def _issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    server_auth: bool,
    client_auth: bool,
    days: int,
    not_before: dt.datetime | None = None,
) -> bytes:
    _check_days(days)
    if not dns_names and not ip_addresses:
        raise InvalidSpecError("dns_names", "a certificate needs at least one name")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_auth else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else []
    if not usages:
        raise InvalidSpecError("server_auth", "a certificate needs server or client auth")
    ca_cert = _load_cert(ca_cert_pem, "ca_cert_pem")
    ca_key = _load_key(ca_key_pem, "ca_key_pem")
    if ca_key.public_key() != ca_cert.public_key():
        raise InvalidSpecError("ca_key_pem", "is not the key of the CA certificate")
    names: list[x509.GeneralName] = []
    for dns in dns_names:
        if not dns or not dns.isascii() or any(c.isspace() for c in dns):
            raise InvalidSpecError("dns_names", f"{dns!r} is not a DNS name")
        names.append(x509.DNSName(dns))
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise InvalidSpecError("ip_addresses", f"{ip!r} is not an IP address") from None
    start = not_before if not_before is not None else _now() - _CLOCK_SKEW
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise InvalidSpecError("days", f"must be a whole number of days >= 1, got {days!r}")


def _load_cert(pem: bytes, field: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidSpecError(field, f"not a PEM certificate: {exc}") from None


def _load_key(pem: bytes, field: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidSpecError(field, f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidSpecError(field, "must be an ECDSA or RSA key")
    return key


def _split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.append(host)
    return dns, ips


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidSpecError(what, f"cannot read {path}: {exc.strerror or exc}") from None


def _write_pair(
    cert_path: Path, cert_pem: bytes, key_path: Path, key_pem: bytes
) -> dict[str, Path]:
    write_atomically(key_path, key_pem, mode=0o600)
    write_atomically(cert_path, cert_pem, mode=0o644)
    return {key_path.name: key_path, cert_path.name: cert_path}
