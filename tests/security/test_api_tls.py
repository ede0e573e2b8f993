"""The API's TLS certificate is replaced on disk and served to new connections without a
restart, while a connection opened before keeps working."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cryptography import x509
from secure_stack import peer_certificate

from orchestrator.api import ApiServer
from orchestrator.config import SecurityConfig, TlsFiles
from orchestrator.sdk import AsyncClient
from orchestrator.security.certs import API_SERVER_NAME, issue_certificate, write_dev_pki
from orchestrator.store import JobStore


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_a_replaced_api_certificate_is_served_without_a_restart(
    store: JobStore, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    write_dev_pki(certs)
    files = TlsFiles.in_dir(certs, "api")
    server = ApiServer(
        store,
        security=SecurityConfig(api_tls=files, agent_tls=TlsFiles.in_dir(certs, "control-plane")),
    )
    await server.start()
    ca = certs / "ca.pem"
    try:
        before = await asyncio.to_thread(
            peer_certificate, server.address, TlsFiles(ca=ca), API_SERVER_NAME
        )
        client = await AsyncClient.connect(server.address, tls=TlsFiles(ca=ca))
        try:
            cert, key = issue_certificate(
                (certs / "ca.pem").read_bytes(),
                (certs / "ca-key.pem").read_bytes(),
                common_name=API_SERVER_NAME,
                dns_names=[API_SERVER_NAME, "localhost"],
                ip_addresses=["127.0.0.1"],
                days=30,
            )
            replace(files.key, key)  # type: ignore[arg-type]
            replace(files.cert, cert)  # type: ignore[arg-type]
            after = await asyncio.to_thread(
                peer_certificate, server.address, TlsFiles(ca=ca), API_SERVER_NAME
            )
            assert after.serial_number != before.serial_number
            assert after.serial_number == x509.load_pem_x509_certificate(cert).serial_number
            # the connection opened before the renewal carries on
            assert await client.tenants() == []
        finally:
            await client.close()
    finally:
        await server.stop(0)
