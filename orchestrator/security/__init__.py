"""Transport security, identities, authorisation and limits, each in its own module.

- ``tls``: the only builder of gRPC TLS credentials; server certificates reload from disk.
- ``certs``: a development CA, certificates naming a site or the control plane, CSR signing.
- ``tokens``: signed, expiring bearer tokens (Ed25519) and the principal they name.
- ``authz``: default-deny scopes per method, and the checks on each object (job, site, tenant).
- ``ratelimit``: a bounded token bucket per principal.
- ``secrets``: refusal of environment values that look like secrets.
- ``files``: writing key material atomically, private from the start.

The modules are imported by name (``from orchestrator.security.tokens import ...``); this
package imports none of them, so that light users (validation imports ``secrets``) do not pull
in ``cryptography`` or gRPC.
"""

__all__ = ["authz", "certs", "files", "ratelimit", "secrets", "tls", "tokens"]
