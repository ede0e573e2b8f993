"""gRPC TLS credentials from ``TlsFiles``: the one module that builds them.

Servers reload their certificate without a restart: before each new connection's handshake,
gRPC asks ``server_credentials``' fetcher, which re-reads the files when one of them was
replaced or changed. New connections get the new certificate; open ones continue. A broken or
half-written replacement (unreadable, not PEM, a key that is not the certificate's) is logged
and the last good configuration stays in use.

Clients check the server's certificate against a fixed name (``channel_options_for``), not the
host or address they dial, so an agent is identified by its site's name wherever it runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from orchestrator.config import TlsFiles
from orchestrator.errors import InvalidSpecError
from orchestrator.security.certs import certificate_dns_names

__all__ = [
    "channel_credentials",
    "channel_options_for",
    "peer_dns_names",
    "server_credentials",
]

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


def server_credentials(
    files: TlsFiles, *, require_client_auth: bool, server_name: str | None = None
) -> grpc.ServerCredentials:
    """Credentials of a TLS server with ``files``' certificate and key, reloaded from disk when
    they change. With ``require_client_auth``, clients must present a certificate chaining to
    ``files.ca``. With ``server_name``, a certificate that does not name it is refused (at
    start: ``InvalidSpecError``; as a replacement: logged, the old one kept).

    Raises ``InvalidSpecError`` naming the file when one is missing, unreadable or invalid.
    """
    if files.cert is None or files.key is None:
        raise InvalidSpecError("tls.cert", "a TLS server needs a certificate and its key")
    reloader = _Reloader(
        files.cert,
        files.key,
        files.ca,
        require_client_auth=require_client_auth,
        server_name=server_name,
    )
    # the stub's type omits it, but gRPC documents None from the fetcher as "no change"
    fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", reloader.fetch)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        fetch,
        require_client_authentication=require_client_auth,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials of a TLS client trusting ``files.ca``, presenting ``files.cert`` if set. The
    files are read now: build new credentials (a new channel) to pick up replaced files."""
    ca = _read(files.ca)
    _check_certs(files.ca, ca)
    if files.cert is None or files.key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    material = _load_identity(files.cert, files.key, None)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=material.key, certificate_chain=material.cert
    )


def channel_options_for(server_name: str) -> list[tuple[str, Any]]:
    """Channel options that make the handshake check that the server's certificate names
    ``server_name``, whatever host or address the channel dials."""
    return [("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name)]


def peer_dns_names(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """DNS names of the verified client certificate of a server call; [] without one (plaintext,
    or TLS without client authentication)."""
    auth = {key: list(values) for key, values in context.auth_context().items()}
    if auth.get("transport_security_type") != [b"ssl"]:
        return []
    # "peer_dns" holds the DNS names only; older cores put every name under the SAN key
    raw = auth.get("peer_dns") or auth.get("x509_subject_alternative_name") or []
    return [v.decode("ascii", "replace") for v in raw]


# -- internals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    cert: bytes
    key: bytes


class _Reloader:
    """Holds the last good configuration; ``fetch`` returns a new one when the files changed."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        ca: Path,
        *,
        require_client_auth: bool,
        server_name: str | None,
    ) -> None:
        self._cert, self._key, self._ca = cert, key, ca
        self._paths = (cert, key, *([ca] if require_client_auth else []))
        self._require_client_auth = require_client_auth
        self._server_name = server_name
        self._stamp = self._stat()
        self.initial = self._load()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake; None keeps the current configuration.

        Problems are reported once per change of the files, not on every handshake.
        """
        try:
            stamp = self._stat()
        except InvalidSpecError as exc:
            if self._stamp != ():
                log.warning("TLS files cannot be read; keeping the old ones: %s", exc)
                self._stamp = ()
            return None
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            config = self._load()
        except InvalidSpecError as exc:
            log.warning("TLS files changed but are not usable; keeping the old ones: %s", exc)
            return None
        except Exception:  # raised into gRPC's handshake, it would fail every one
            log.exception("reloading TLS files failed; keeping the old ones")
            return None
        log.info("TLS certificate reloaded from %s", self._cert)
        return config

    def _stat(self) -> _Stamp:
        out = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise _file_error(path, exc) from None
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        identity = _load_identity(self._cert, self._key, self._server_name)
        roots = None
        if self._require_client_auth:
            roots = _read(self._ca)
            _check_certs(self._ca, roots)
        return grpc.ssl_server_certificate_configuration(
            [(identity.key, identity.cert)], root_certificates=roots
        )


def _load_identity(cert_path: Path, key_path: Path, server_name: str | None) -> _Identity:
    cert_pem, key_pem = _read(cert_path), _read(key_path)
    certs = _check_certs(cert_path, cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidSpecError(
            "tls.key", f"{key_path} is not an unencrypted PEM private key: {exc}"
        ) from None
    if key.public_key() != certs[0].public_key():
        raise InvalidSpecError("tls.key", f"{key_path} is not the key of {cert_path}")
    if server_name is not None:
        names = certificate_dns_names(cert_pem)
        if server_name not in names:
            raise InvalidSpecError(
                "tls.cert",
                f"{cert_path} names {names or 'no DNS name'}; this server needs a certificate "
                f"for {server_name!r}",
            )
    return _Identity(cert=cert_pem, key=key_pem)


def _check_certs(path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidSpecError("tls", f"{path} is not a PEM certificate: {exc}") from None
    return certs


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _file_error(path, exc) from None


def _file_error(path: Path, exc: OSError) -> InvalidSpecError:
    return InvalidSpecError("tls", f"cannot read {path}: {exc.strerror or exc}")
