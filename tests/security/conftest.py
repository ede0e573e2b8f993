"""Fixtures of the security tests: a secured API server (TLS, tokens, the default limits) over
the session's Redis, and the tokens of every kind of principal."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# the helper module sits beside the tests
sys.path.insert(0, str(Path(__file__).parent))

from secure_stack import Pki, SecureApi, Tokens, site

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.security.certs import write_dev_pki
from orchestrator.security.tokens import Kind, TokenSigner, write_key_pair
from orchestrator.store import JobStore


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A development CA, the API's and control plane's certificates, and token keys."""
    root = tmp_path_factory.mktemp("pki")
    write_dev_pki(root / "certs")
    signing, verify = write_key_pair(root / "auth")
    return Pki(certs=root / "certs", signing_key=signing, verify_key=verify)


@pytest.fixture(scope="session")
def tokens(pki: Pki) -> Tokens:
    """Tokens of an operator, tenants acme and globex, partners narvik-jv and arctic-compute."""
    signer = TokenSigner.from_file(pki.signing_key)

    def issue(kind: Kind, subject: str, **kwargs: str) -> str:
        return signer.issue(kind, subject, ttl_seconds=3600, **kwargs)[0]

    return Tokens(
        operator=issue(Kind.OPERATOR, "root"),
        acme=issue(Kind.TENANT, "alice", tenant="acme"),
        globex=issue(Kind.TENANT, "bob", tenant="globex"),
        narvik_jv=issue(Kind.PARTNER, "narvik-jv", partner="narvik-jv"),
        arctic=issue(Kind.PARTNER, "arctic-compute", partner="arctic-compute"),
        signer=signer,
    )


@pytest.fixture
async def secure_api(store: JobStore, pki: Pki, tokens: Tokens) -> AsyncIterator[SecureApi]:
    """The API with TLS and tokens; sites narvik (owner narvik-jv) and tromso (arctic-compute)
    registered, tenants acme (NO) and globex (GB)."""
    server = ApiServer(store, security=pki.security())
    await server.start()
    await store.register_site(site("narvik", owner="narvik-jv"))
    await store.register_site(site("tromso", owner="arctic-compute"))
    for tenant_id, country in (("acme", "NO"), ("globex", "GB")):
        await store.put_tenant(types_pb2.Tenant(id=tenant_id, country=country, weight=1.0))
    try:
        yield SecureApi(server=server, store=store, pki=pki, tokens=tokens)
    finally:
        await server.stop(0)
