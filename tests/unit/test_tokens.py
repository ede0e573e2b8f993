"""Bearer tokens: issue and verify round trip; every way a token can be wrong is refused with a
message that says what is wrong and never carries the token; caches stay bounded."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import InvalidSpecError, UnauthenticatedError
from orchestrator.security.tokens import (
    ALL_SCOPES,
    ANONYMOUS_OPERATOR,
    DEFAULT_SCOPES,
    MAX_TOKEN_LENGTH,
    MAX_TTL_SECONDS,
    Kind,
    Principal,
    TokenSigner,
    TokenVerifier,
    decode_unverified,
    generate_key_pair,
    key_id,
    redact,
    write_key_pair,
)

NOW = 1_750_000_000.0
DAY = 86400


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return data


def forge(payload: dict[str, Any] | bytes | str, key: Ed25519PrivateKey) -> str:
    """A token with any payload, properly signed by ``key``."""
    if isinstance(payload, dict):
        raw = json.dumps(payload).encode()
    elif isinstance(payload, str):
        raw = payload.encode()
    else:
        raw = payload
    signed = f"sg1.{b64(raw)}"
    return f"{signed}.{b64(key.sign(signed.encode()))}"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signer(key: Ed25519PrivateKey) -> TokenSigner:
    return TokenSigner(key)


@pytest.fixture
def verifier(key: Ed25519PrivateKey) -> TokenVerifier:
    return TokenVerifier([key.public_key()], audience="sovereign-grid")


def tenant_token(signer: TokenSigner, **kw: Any) -> str:
    kw.setdefault("ttl_seconds", 3600)
    kw.setdefault("now", NOW)
    token, _ = signer.issue(Kind.TENANT, "alice", tenant="acme", **kw)
    return token


def refusal(verifier: TokenVerifier, token: str, now: float = NOW + 10) -> str:
    with pytest.raises(UnauthenticatedError) as err:
        verifier.verify(token, now=now)
    return err.value.message


# -- round trip ---------------------------------------------------------------------------------


def test_default_scopes_per_kind() -> None:
    assert DEFAULT_SCOPES[Kind.OPERATOR] == ALL_SCOPES
    assert len(ALL_SCOPES) == 11
    assert DEFAULT_SCOPES[Kind.TENANT] == {
        "jobs:submit",
        "jobs:read",
        "jobs:cancel",
        "sites:read",
        "tenants:read",
    }
    assert DEFAULT_SCOPES[Kind.PARTNER] == {"sites:read", "federation:manage", "usage:read"}
    assert DEFAULT_SCOPES[Kind.ENROLMENT] == {"federation:enrol"}


@pytest.mark.parametrize(
    ("kind", "party", "name"),
    [
        (Kind.OPERATOR, {}, "operator:root"),
        (Kind.TENANT, {"tenant": "acme"}, "tenant:acme/root"),
        (Kind.PARTNER, {"partner": "jv-narvik"}, "partner:jv-narvik/root"),
        (Kind.ENROLMENT, {"partner": "jv-narvik"}, "enrolment:jv-narvik/root"),
    ],
)
def test_round_trip_for_every_kind(
    signer: TokenSigner, verifier: TokenVerifier, kind: Kind, party: dict[str, str], name: str
) -> None:
    token, issued = signer.issue(kind, "root", ttl_seconds=600, now=NOW, **party)
    assert token.startswith("sg1.") and token.count(".") == 2 and "=" not in token
    got = verifier.verify(token, now=NOW + 1)
    assert got == issued
    assert got.name == name
    assert got.scopes == DEFAULT_SCOPES[kind]
    assert got.expires_at == NOW + 600
    assert len(got.token_id) == 32
    claims = payload_of(token)
    assert set(claims) == {
        "v", "kid", "kind", "sub", "tenant", "partner", "scopes", "aud", "iat", "nbf", "exp", "jti"
    }  # fmt: skip
    assert claims["v"] == 1 and claims["kid"] == signer.kid and claims["aud"] == "sovereign-grid"
    assert claims["scopes"] == sorted(DEFAULT_SCOPES[kind])
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (NOW, NOW, NOW + 600)


def test_kid_is_a_prefix_of_the_sha256_of_the_raw_public_key(key: Ed25519PrivateKey) -> None:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]
    assert TokenSigner(key).kid == key_id(key.public_key())


def test_each_token_has_its_own_id(signer: TokenSigner) -> None:
    ids = {signer.issue(Kind.OPERATOR, "root", ttl_seconds=60)[1].token_id for _ in range(50)}
    assert len(ids) == 50


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,20}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(Kind)),
    subject=names,
    party=names,
    data=st.data(),
    ttl=st.integers(1, MAX_TTL_SECONDS),
)
def test_round_trip_property(
    kind: Kind, subject: str, party: str, data: st.DataObject, ttl: int
) -> None:
    key = Ed25519PrivateKey.generate()
    scopes = data.draw(st.sets(st.sampled_from(sorted(DEFAULT_SCOPES[kind])), min_size=1))
    kw = {"tenant": party} if kind is Kind.TENANT else {}
    if kind in (Kind.PARTNER, Kind.ENROLMENT):
        kw = {"partner": party}
    token, issued = TokenSigner(key).issue(
        kind, subject, scopes=scopes, ttl_seconds=ttl, now=NOW, **kw
    )
    got = TokenVerifier([key.public_key()]).verify(token, now=NOW + ttl - 1)
    assert got == issued
    assert got.scopes == scopes and got.subject == subject
    assert len(token) <= MAX_TOKEN_LENGTH


def test_fewer_scopes_than_the_default(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = tenant_token(signer, scopes=["jobs:read"])
    assert verifier.verify(token, now=NOW).scopes == {"jobs:read"}


def test_anonymous_operator_holds_every_scope() -> None:
    assert ANONYMOUS_OPERATOR.kind is Kind.OPERATOR
    assert ANONYMOUS_OPERATOR.scopes == ALL_SCOPES
    assert ANONYMOUS_OPERATOR.tenant == "" and ANONYMOUS_OPERATOR.partner == ""
    assert ANONYMOUS_OPERATOR.name.startswith("operator:")


def test_a_principal_names_exactly_the_party_its_kind_needs() -> None:
    with pytest.raises(ValueError, match="needs tenant"):
        Principal(kind=Kind.TENANT, subject="a")
    with pytest.raises(ValueError, match="has no tenant"):
        Principal(kind=Kind.OPERATOR, subject="a", tenant="acme")
    with pytest.raises(ValueError, match="needs partner"):
        Principal(kind=Kind.ENROLMENT, subject="a")
    with pytest.raises(ValueError, match="has no partner"):
        Principal(kind=Kind.TENANT, subject="a", tenant="acme", partner="p")


# -- issuing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kw", "field", "match"),
    [
        (Kind.TENANT, {"tenant": "acme", "scopes": ["sites:admin"]}, "scopes", "sites:admin"),
        (Kind.PARTNER, {"partner": "p", "scopes": ["jobs:submit"]}, "scopes", "jobs:submit"),
        (Kind.ENROLMENT, {"partner": "p", "scopes": ["usage:read"]}, "scopes", "usage:read"),
        (Kind.OPERATOR, {"scopes": ["jobs:everything"]}, "scopes", "jobs:everything"),
        (Kind.OPERATOR, {"scopes": []}, "scopes", "at least one"),
        (Kind.OPERATOR, {"ttl_seconds": 0}, "ttl_seconds", "400 days"),
        (Kind.OPERATOR, {"ttl_seconds": MAX_TTL_SECONDS + 1}, "ttl_seconds", "400 days"),
        (Kind.OPERATOR, {"tenant": "acme"}, "tenant", "only tenant tokens"),
        (Kind.TENANT, {}, "tenant", "is not"),
        (Kind.PARTNER, {"tenant": "acme", "partner": "p"}, "tenant", "only tenant"),
        (Kind.PARTNER, {}, "partner", "is not"),
        (Kind.TENANT, {"tenant": "a/b"}, "tenant", "is not"),
        (Kind.OPERATOR, {"audience": "a b"}, "audience", "is not"),
    ],
)
def test_issue_refuses_bad_requests(
    signer: TokenSigner, kind: Kind, kw: dict[str, Any], field: str, match: str
) -> None:
    kw.setdefault("ttl_seconds", 60)
    with pytest.raises(InvalidSpecError, match=match) as err:
        signer.issue(kind, "root", **kw)
    assert err.value.field == field


@pytest.mark.parametrize("subject", ["", "a\nb", "a b", "x" * 129, "-lead", "a\u202eb"])
def test_issue_refuses_bad_subjects(signer: TokenSigner, subject: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        signer.issue(Kind.OPERATOR, subject, ttl_seconds=60)
    assert err.value.field == "subject"


# -- refusals -----------------------------------------------------------------------------------


def test_no_token(verifier: TokenVerifier) -> None:
    assert refusal(verifier, "") == "no bearer token"


def test_expired_with_clock_skew(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = tenant_token(signer, ttl_seconds=60)  # NOW is 2025-06-15T15:06:40Z
    verifier.verify(token, now=NOW + 60 + 29)  # within the 30 s skew
    message = refusal(TokenVerifier([signer.public_key]), token, now=NOW + 60 + 30)
    assert message == "token expired at 2025-06-15T15:07:40Z"


def test_expiry_is_rechecked_on_a_cache_hit(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = tenant_token(signer, ttl_seconds=60)
    verifier.verify(token, now=NOW)
    assert verifier.cache_info().entries == 1
    assert refusal(verifier, token, now=NOW + 200).startswith("token expired at ")
    assert verifier.cache_info().entries == 0
    assert refusal(verifier, token, now=NOW + 201).startswith("token expired at ")


def test_not_yet_valid_is_refused_then_accepted(
    signer: TokenSigner, verifier: TokenVerifier
) -> None:
    token = tenant_token(signer, now=NOW + 1000)
    message = refusal(verifier, token, now=NOW)
    assert message == f"token not valid before {'2025-06-15T15:23:20Z'}"
    verifier.verify(token, now=NOW + 1000 - 29)  # within the skew; not cached as refused


def test_wrong_audience(signer: TokenSigner, key: Ed25519PrivateKey) -> None:
    token = tenant_token(signer, audience="other-grid")
    message = refusal(TokenVerifier([key.public_key()], audience="sovereign-grid"), token)
    assert message == "token is for audience 'other-grid', not 'sovereign-grid'"


def test_signed_by_an_unknown_key(verifier: TokenVerifier) -> None:
    stranger = TokenSigner(Ed25519PrivateKey.generate())
    assert refusal(verifier, tenant_token(stranger)) == "token signed by an unknown key"


def test_signed_by_another_key_under_our_kid(signer: TokenSigner, verifier: TokenVerifier) -> None:
    claims = payload_of(tenant_token(signer))
    forged = forge(claims, Ed25519PrivateKey.generate())
    assert refusal(verifier, forged) == "token signature does not verify"


def test_a_payload_changed_after_signing(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = tenant_token(signer)
    claims = payload_of(token)
    claims["tenant"] = "other"
    tampered = f"sg1.{b64(json.dumps(claims).encode())}.{token.split('.')[2]}"
    assert refusal(verifier, tampered) == "token signature does not verify"


@pytest.mark.parametrize("part", [0, 1, 2])
def test_flipping_a_byte_in_any_part_is_refused(
    signer: TokenSigner, verifier: TokenVerifier, part: int
) -> None:
    token = tenant_token(signer)
    parts = token.split(".")
    for i in range(len(parts[part])):
        chars = list(parts[part])
        chars[i] = "A" if chars[i] != "A" else "B"
        mutated = ".".join([*parts[:part], "".join(chars), *parts[part + 1 :]])
        with pytest.raises(UnauthenticatedError):
            verifier.verify(mutated, now=NOW)
    assert verifier.verify(token, now=NOW).tenant == "acme"


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    key = Ed25519PrivateKey.generate()
    token, _ = TokenSigner(key).issue(Kind.PARTNER, "ops", partner="jv", ttl_seconds=60, now=NOW)
    i = data.draw(st.integers(0, len(token) - 1))
    ch = data.draw(st.characters(codec="ascii").filter(lambda c: c != token[i]))
    mutated = token[:i] + ch + token[i + 1 :]
    with pytest.raises(UnauthenticatedError):
        TokenVerifier([key.public_key()]).verify(mutated, now=NOW)


def test_truncated_tokens(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = tenant_token(signer)
    sig_start = token.rindex(".") + 1
    for cut in (1, 2, 3, 4, 10, sig_start - 1, sig_start, sig_start + 5, len(token) - 1):
        assert refusal(verifier, token[:cut]).startswith("malformed token")


def test_oversized_token(verifier: TokenVerifier, key: Ed25519PrivateKey) -> None:
    big = forge({"pad": "x" * MAX_TOKEN_LENGTH}, key)
    assert refusal(verifier, big) == "malformed token (longer than 4096 characters)"
    assert refusal(verifier, "x" * 1_000_000).startswith("malformed token")
    assert verifier.cache_info().negative_entries == 0  # refused before any work


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("sg1", "three"),
        ("sg1.a.b.c", "three"),
        ("sg2.e30.AAAA", "start"),
        ("Bearer sg1.e30.AAAA", "start"),
        ("sg1.e30=.AAAA", "base64url"),
        ("sg1.e+0.AAAA", "base64url"),
        ("sg1.e30.AAAA", "signature"),
        ("sg1.ë30.AAAA", "ASCII"),
    ],
)
def test_malformed_shapes(verifier: TokenVerifier, token: str, why: str) -> None:
    message = refusal(verifier, token)
    assert message.startswith("malformed token") and why in message


def test_non_canonical_base64_of_the_signature_is_refused(
    signer: TokenSigner, verifier: TokenVerifier
) -> None:
    token = tenant_token(signer)
    head, sig = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 64 bytes take 86 characters: the last carries 2 bits of data and 4 unused bits.
    sibling = alphabet[alphabet.index(sig[-1]) ^ 1]
    assert base64.urlsafe_b64decode(sig[:-1] + sibling + "==") == base64.urlsafe_b64decode(
        sig + "=="
    )
    assert "canonical" in refusal(verifier, f"{head}.{sig[:-1]}{sibling}")


def good_claims(signer: TokenSigner) -> dict[str, Any]:
    return payload_of(tenant_token(signer))


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"v": True},
        {"v": "1"},
        {"kid": 7},
        {"kind": "root"},
        {"kind": "TENANT"},
        {"sub": ""},
        {"sub": "a\nb"},
        {"sub": ["alice"]},
        {"tenant": ""},
        {"partner": "p"},
        {"scopes": "jobs:read"},
        {"scopes": []},
        {"scopes": ["jobs:read", "jobs:read"]},
        {"scopes": ["jobs:submit", "jobs:read"]},
        {"scopes": ["jobs:read", 1]},
        {"scopes": ["jobs:read", "sites:admin"]},
        {"aud": None},
        {"iat": "1750000000"},
        {"iat": 1750000000.0},
        {"exp": -1},
        {"exp": 2**62},
        {"nbf": True},
        {"exp": 1},
        {"exp": int(NOW) + MAX_TTL_SECONDS + 1},
        {"jti": "not-hex"},
        {"extra": 1},
    ],
)
def test_claims_of_the_wrong_shape_are_refused_even_when_signed(
    signer: TokenSigner, verifier: TokenVerifier, key: Ed25519PrivateKey, change: dict[str, Any]
) -> None:
    claims = {**good_claims(signer), **change}
    assert refusal(verifier, forge(claims, key)).startswith("malformed token")


@pytest.mark.parametrize("missing", ["v", "kid", "tenant", "scopes", "exp", "jti"])
def test_missing_claims_are_refused(
    signer: TokenSigner, verifier: TokenVerifier, key: Ed25519PrivateKey, missing: str
) -> None:
    claims = good_claims(signer)
    del claims[missing]
    assert refusal(verifier, forge(claims, key)).startswith("malformed token")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe{}",
        b'{"v": NaN}',
        b"[" * 1400 + b"]" * 1400,
        '{"v":1}'.encode("utf-16"),
    ],
)
def test_payloads_that_are_not_a_json_object(
    verifier: TokenVerifier, key: Ed25519PrivateKey, payload: bytes
) -> None:
    message = refusal(verifier, forge(payload, key))
    assert message.startswith("malformed token")


def test_duplicate_keys_are_refused(
    signer: TokenSigner, verifier: TokenVerifier, key: Ed25519PrivateKey
) -> None:
    text = json.dumps(good_claims(signer))
    duplicated = text[:-1] + ', "tenant": "other"}'
    assert "repeats" in refusal(verifier, forge(duplicated, key))


# -- the token never leaks ----------------------------------------------------------------------


def every_refused_token(signer: TokenSigner, key: Ed25519PrivateKey) -> Iterator[str]:
    good = tenant_token(signer)
    yield tenant_token(signer, ttl_seconds=1)  # expired by then
    yield tenant_token(signer, now=NOW + 10_000)  # not yet valid
    yield tenant_token(signer, audience="elsewhere")
    yield tenant_token(TokenSigner(Ed25519PrivateKey.generate()))
    yield forge(payload_of(good), Ed25519PrivateKey.generate())
    yield good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
    yield good[:40]
    yield good + "." + good
    yield forge(b"\xff" * 50, key)
    yield forge({**payload_of(good), "v": True}, key)
    yield good + "x" * MAX_TOKEN_LENGTH


def test_no_message_or_log_record_carries_the_token(
    signer: TokenSigner, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = TokenVerifier([key.public_key()])
    caplog.set_level(logging.DEBUG)
    refused = list(every_refused_token(signer, key))
    for token in refused:
        secrets_in_it = [token, *(p for p in token.split(".")[1:] if len(p) >= 8)]
        for _ in range(2):  # fresh, then from the negative cache
            with pytest.raises(UnauthenticatedError) as err:
                verifier.verify(token, now=NOW + 100)
            exc = err.value
            assert exc.__cause__ is None
            assert exc.__context__ is None or exc.__suppress_context__
            texts = [str(exc), repr(exc), exc.message, *map(str, exc.args)]
            for text in texts:
                for secret in secrets_in_it:
                    assert secret not in text
                    assert secret[:24] not in text
        assert redact(token) != token
        for secret in secrets_in_it:
            assert secret[:24] not in redact(token)
    for record in caplog.records:
        message = record.getMessage()
        for token in refused:
            for part in token.split("."):
                if len(part) >= 8:
                    assert part[:24] not in message
    assert any("refused token" in r.getMessage() for r in caplog.records)


def test_redact_names_the_token_id_only(signer: TokenSigner) -> None:
    token, principal = signer.issue(Kind.OPERATOR, "root", ttl_seconds=60)
    shown = redact(token)
    assert shown == f"sg1.…(jti {principal.token_id[:8]}…)"
    assert token.split(".")[1][:10] not in shown and token.split(".")[2][:10] not in shown
    assert redact("garbage.with.parts") == "sg1.…(malformed)"
    assert redact("") == "(no token)"


def test_decode_unverified_reads_any_well_formed_token() -> None:
    stranger = TokenSigner(Ed25519PrivateKey.generate())
    token, principal = stranger.issue(Kind.PARTNER, "ops", partner="jv", ttl_seconds=60)
    claims = decode_unverified(token)
    assert claims.principal() == principal
    assert claims.kid == stranger.kid
    with pytest.raises(UnauthenticatedError, match="malformed token"):
        decode_unverified(token[:-30])


# -- caches -------------------------------------------------------------------------------------


def test_hits_skip_the_signature_check(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = tenant_token(signer)
    for _ in range(5):
        verifier.verify(token, now=NOW)
    info = verifier.cache_info()
    assert (info.hits, info.misses, info.entries) == (4, 1, 1)
    forged = forge(payload_of(token), Ed25519PrivateKey.generate())
    for _ in range(3):
        refusal(verifier, forged)
    info = verifier.cache_info()
    assert (info.hits, info.misses, info.negative_entries) == (6, 2, 1)


def test_a_flood_of_distinct_garbage_keeps_memory_bounded(
    signer: TokenSigner, key: Ed25519PrivateKey
) -> None:
    verifier = TokenVerifier([key.public_key()], cache_size=100, negative_cache_size=50)
    good = tenant_token(signer)
    verifier.verify(good, now=NOW)
    template = payload_of(good)
    fake_sig = b64(bytes(64))
    for i in range(20_000):
        if i % 2:
            token = f"garbage-{i}"
        else:  # well-formed, costs a signature check
            token = f"sg1.{b64(json.dumps({**template, 'sub': f'u{i}'}).encode())}.{fake_sig}"
        with pytest.raises(UnauthenticatedError):
            verifier.verify(token, now=NOW)
    info = verifier.cache_info()
    assert info.negative_entries == 50
    assert info.entries == 1
    assert verifier.verify(good, now=NOW).tenant == "acme"


def test_the_positive_cache_is_bounded(signer: TokenSigner, key: Ed25519PrivateKey) -> None:
    verifier = TokenVerifier([key.public_key()], cache_size=10)
    tokens = [tenant_token(signer) for _ in range(30)]
    for token in tokens:
        verifier.verify(token, now=NOW)
    assert verifier.cache_info().entries == 10
    for token in tokens:  # evicted ones verify again from scratch
        assert verifier.verify(token, now=NOW).tenant == "acme"


# -- keys ---------------------------------------------------------------------------------------


def test_write_key_pair_is_idempotent_and_private(tmp_path: Path) -> None:
    signing, verify = write_key_pair(tmp_path / "auth")
    assert (signing.name, verify.name) == ("token-signing.pem", "token-verify.pem")
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "auth").stat().st_mode) & 0o077 == 0
    first = signing.read_bytes(), verify.read_bytes()
    assert write_key_pair(tmp_path / "auth") == (signing, verify)
    assert (signing.read_bytes(), verify.read_bytes()) == first
    assert not [p for p in (tmp_path / "auth").iterdir() if p.name.startswith(".")]

    verify.unlink()  # derived from the signing key again
    write_key_pair(tmp_path / "auth")
    assert verify.read_bytes() == first[1]

    write_key_pair(tmp_path / "auth", force=True)
    assert signing.read_bytes() != first[0] and verify.read_bytes() != first[1]
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600


def test_keys_on_disk_round_trip(tmp_path: Path) -> None:
    signing, verify = write_key_pair(tmp_path)
    signer = TokenSigner.from_file(signing)
    token, principal = signer.issue(Kind.OPERATOR, "root", ttl_seconds=60)
    assert TokenVerifier.from_files([verify], audience="sovereign-grid").verify(token) == principal


def test_a_verifier_trusts_several_keys_during_a_rotation(tmp_path: Path) -> None:
    old, new = (tmp_path / "old", tmp_path / "new")
    old_keys, new_keys = write_key_pair(old), write_key_pair(new)
    verifier = TokenVerifier.from_files([old_keys[1], new_keys[1]])
    for signing in (old_keys[0], new_keys[0]):
        token, _ = TokenSigner.from_file(signing).issue(Kind.OPERATOR, "root", ttl_seconds=60)
        verifier.verify(token)
    assert len(verifier.key_ids) == 2


def test_generate_key_pair_gives_matching_pems() -> None:
    private_pem, public_pem = generate_key_pair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    private = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public_pem
    )


def test_keys_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = tmp_path / "ec.pem"
    ec_private.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_public = tmp_path / "ec.pub"
    ec_public.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InvalidSpecError, match="not an Ed25519 private key"):
        TokenSigner.from_file(ec_private)
    with pytest.raises(InvalidSpecError, match="not an Ed25519 public key"):
        TokenVerifier.from_files([ec_public])
    with pytest.raises(InvalidSpecError, match="not a PEM public key"):
        TokenVerifier.from_files([ec_private])
    with pytest.raises(InvalidSpecError, match="cannot read"):
        TokenVerifier.from_files([tmp_path / "missing.pem"])
    with pytest.raises(InvalidSpecError, match="at least one key"):
        TokenVerifier([])
