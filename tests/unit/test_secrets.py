"""Secrets stay out of job specs: values that look like credentials are refused (without being
quoted back), references to a secret store pass, ordinary values pass."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import InvalidSpecError
from orchestrator.security.secrets import check_env_secrets, check_secret_reference
from orchestrator.security.tokens import Kind, TokenSigner
from orchestrator.validation import normalize_spec

# Shapes of real credentials, made up (none of these is live).
SHAPED = {
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----",
    "pem8": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY-----",
    "github": "ghp_" + "a1B2c3D4e5" * 4,
    "github_app": "ghs_" + "Z9y8X7w6V5" * 3,
    "slack": "xoxb-123456789012-abcdefghijkl",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "openai": "sk-" + "Ab3" * 10,
    "openai_project": "sk-proj-" + "x1Y2z3" * 5,
    "url": "postgres://app:hunter2@db.internal:5432/prod",
    "url_no_user": "redis://:s3cret@cache:6379/0",
    "bearer": "Bearer ghp_" + "q" * 36,
}


@pytest.mark.parametrize("value", SHAPED.values(), ids=SHAPED.keys())
def test_credential_shaped_values_are_refused_whatever_the_name(value: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        check_env_secrets({"HARMLESS_SOUNDING": value})
    assert err.value.field == "env.HARMLESS_SOUNDING"
    assert "secret://<store>/<path>" in err.value.problem
    assert value not in str(err.value)
    assert value[-8:] not in str(err.value)


def test_our_own_tokens_are_refused() -> None:
    token, _ = TokenSigner(Ed25519PrivateKey.generate()).issue(
        Kind.OPERATOR, "root", ttl_seconds=60
    )
    with pytest.raises(InvalidSpecError, match="orchestrator token") as err:
        check_env_secrets({"SG_API_TOKEN_VALUE": token, "X": "1"})
    assert token[4:20] not in str(err.value)


@pytest.mark.parametrize(
    "name",
    [
        "DB_PASSWORD",
        "db_passwd",
        "AWS_SECRET_ACCESS_KEY",
        "HF_TOKEN",
        "GITHUB_TOKEN",
        "OPENAI_API_KEY",
        "MYAPIKEY",
        "SSH_PRIVATE_KEY",
        "AWS_ACCESS_KEY_ID",
        "GOOGLE_CREDENTIALS",
        "ClientSecret",
        "TOKEN",
    ],
)
def test_secret_sounding_names_with_a_value_are_refused(name: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        check_env_secrets({name: "hunter2-correct-horse"})
    assert err.value.field == f"env.{name}"
    assert "name suggests a secret" in err.value.problem
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_PASSWORD", ""),
        ("DB_PASSWORD", "secret://vault/db/app-password"),
        ("HF_TOKEN", "secret://k8s/hf/token"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("MAX_NEW_TOKENS", "512"),
        ("MAX_TOKEN_LENGTH", "2048"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/var/run/secrets/gcp.json"),
        ("SECRETS_DIR", "./secrets"),
        ("USE_TOKEN_AUTH", "true"),
        ("CHECKPOINT", "/data/ckpt/step-1000"),
        ("SEED", "1234567890"),
        ("GIT_SHA", "3f2a9c0d1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49"),
        ("MODEL_SHA256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("HF_HOME", "/cache/hf"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("NCCL_DEBUG", "INFO"),
        ("URL", "https://example.org:8443/path?q=1"),
        ("REPO", "git@github.com:org/repo.git"),
        ("TASK", "task-0123456789abcdefghijklmn"),
        ("S3_PATH", "s3://bucket/key"),
        ("EMPTY", ""),
    ],
)
def test_ordinary_values_pass(name: str, value: str) -> None:
    check_env_secrets({name: value})


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True).filter(
            lambda k: not any(m in k for m in ("PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL"))
        ),
        st.one_of(
            st.integers().map(str),
            st.booleans().map(str),
            st.from_regex(r"/[a-z0-9/._-]{0,60}", fullmatch=True),
            st.binary(min_size=16, max_size=32).map(bytes.hex),
        ),
        max_size=10,
    )
)
def test_ordinary_environments_pass(env: dict[str, str]) -> None:
    check_env_secrets(env)


@pytest.mark.parametrize(
    "reference",
    [
        "secret://vault",
        "secret://vault/",
        "secret:///path",
        "secret://vault/a//b",
        "secret://vault/../etc/passwd",
        "secret://vault/./x",
        "secret://vault/a b",
        "secret://vault/a\nb",
        "secret://vault/a\x00",
        "secret://vault/a\u202eb",
        "secret://-vault/x",
        "secret://vault/" + "x" * 2000,
    ],
)
def test_malformed_references_are_refused(reference: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        check_env_secrets({"DB_PASSWORD": reference})
    assert err.value.field == "env.DB_PASSWORD"
    assert "reference" in err.value.problem


def test_well_formed_references_pass() -> None:
    for ref in ("secret://vault/kv/data/app#password", "secret://aws-sm/prod/db:password"):
        check_secret_reference("env.X", ref)


def test_the_field_prefix_is_the_callers() -> None:
    with pytest.raises(InvalidSpecError) as err:
        check_env_secrets({"API_KEY": "abcdef123456"}, field="job.env")
    assert err.value.field == "job.env.API_KEY"


def test_normalize_spec_refuses_secrets_in_env() -> None:
    spec = types_pb2.JobSpec(name="train", tenant="acme", command=["python", "train.py"])
    spec.env["WANDB_API_KEY"] = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(InvalidSpecError) as err:
        normalize_spec(spec)
    assert err.value.field == "env.WANDB_API_KEY"
    spec.env["WANDB_API_KEY"] = "secret://vault/wandb/key"
    assert normalize_spec(spec).env["WANDB_API_KEY"] == "secret://vault/wandb/key"
