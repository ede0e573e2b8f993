"""``sgctl tokens``: keygen, issue (only the token on stdout), inspect (never the signature);
bad options exit 2 naming the option."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import cli
from orchestrator.cli.tokens import parse_duration, tokens
from orchestrator.security.tokens import DEFAULT_SCOPES, Kind, TokenVerifier


def run(state: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(tokens, list(args), env={"SG_STATE_DIR": str(state)}, input=stdin)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    result = run(state, "keygen")
    assert result.exit_code == 0, result.output
    return state


def verifier(state: Path) -> TokenVerifier:
    return TokenVerifier.from_files([state / "auth" / "token-verify.pem"])


def test_keygen_writes_a_private_key_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = run(state, "keygen")
    assert first.exit_code == 0, first.output
    signing = state / "auth" / "token-signing.pem"
    assert first.stdout.split() == [str(signing), str(state / "auth" / "token-verify.pem")]
    assert "wrote new" in first.stderr and "kid " in first.stderr
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600
    key = signing.read_bytes()

    again = run(state, "keygen")
    assert again.exit_code == 0 and "kept existing" in again.stderr
    assert signing.read_bytes() == key

    forced = run(state, "keygen", "--force")
    assert forced.exit_code == 0 and "wrote new" in forced.stderr
    assert signing.read_bytes() != key


def test_keygen_into_a_directory(tmp_path: Path) -> None:
    result = run(tmp_path / "unused", "keygen", "--dir", str(tmp_path / "keys"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "keys" / "token-signing.pem").exists()
    assert not (tmp_path / "unused").exists()


def test_sgctl_state_dir_option_picks_the_keys(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--state-dir", str(tmp_path / "s"), "tokens", "keygen"]
    result = runner.invoke(cli, args, env={"SG_STATE_DIR": str(tmp_path / "env")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "auth" / "token-signing.pem").exists()
    issued = runner.invoke(
        cli, ["--state-dir", str(tmp_path / "s"), "tokens", "issue", "--operator"]
    )
    assert issued.exit_code == 0, issued.output


def test_issue_prints_only_the_token(state: Path) -> None:
    result = run(state, "issue", "--operator", "--subject", "root")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    principal = verifier(state).verify(lines[0])
    assert principal.name == "operator:root"
    assert principal.scopes == DEFAULT_SCOPES[Kind.OPERATOR]
    assert principal.expires_at == pytest.approx(time.time() + 86400, abs=5)  # default 24h
    assert "operator:root" in result.stderr and "expires " in result.stderr
    assert lines[0] not in result.stderr


@pytest.mark.parametrize(
    ("args", "name", "scopes"),
    [
        (["--tenant", "acme", "--subject", "alice"], "tenant:acme/alice",
         DEFAULT_SCOPES[Kind.TENANT]),
        (["--tenant", "acme", "--scope", "jobs:read"], "tenant:acme/cli", {"jobs:read"}),
        (["--partner", "narvik-jv", "--subject", "ops", "--scope", "usage:read",
          "--scope", "sites:read"], "partner:narvik-jv/ops", {"usage:read", "sites:read"}),
    ],
)  # fmt: skip
def test_issue_for_tenants_and_partners(
    state: Path, args: list[str], name: str, scopes: set[str]
) -> None:
    result = run(state, "issue", *args, "--ttl", "90m")
    assert result.exit_code == 0, result.output
    principal = verifier(state).verify(result.stdout.strip())
    assert principal.name == name and principal.scopes == scopes
    assert principal.expires_at == pytest.approx(time.time() + 5400, abs=5)


def test_issue_with_an_explicit_key_and_audience(state: Path, tmp_path: Path) -> None:
    key = state / "auth" / "token-signing.pem"
    result = run(tmp_path / "elsewhere", "issue", "--operator", "--signing-key", str(key),
                 "--audience", "other-grid")  # fmt: skip
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    other = TokenVerifier.from_files([state / "auth" / "token-verify.pem"], audience="other-grid")
    assert other.verify(token).kind is Kind.OPERATOR


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("90m", 5400), ("3600s", 3600), ("30d", 2_592_000), ("3600", 3600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--operator", "--ttl", "5y"], "--ttl"),
        (["--operator", "--ttl", "-1h"], "--ttl"),
        (["--operator", "--ttl", "0s"], "--ttl"),
        (["--operator", "--ttl", "401d"], "--ttl"),
        (["--operator", "--ttl", "1.5h"], "--ttl"),
        (["--operator", "--scope", "jobs:everything"], "--scope"),
        (["--tenant", "acme", "--scope", "sites:admin"], "--scope"),
        (["--partner", "p", "--scope", "jobs:submit"], "--scope"),
        (["--operator", "--subject", "a b"], "--subject"),
        (["--tenant", "a/b"], "--tenant"),
        (["--operator", "--audience", "x\ny"], "--audience"),
        (["--operator", "--signing-key", "/nonexistent/key.pem"], "--signing-key"),
    ],
)
def test_bad_options_exit_2_naming_the_option(state: Path, args: list[str], option: str) -> None:
    result = run(state, "issue", *args)
    assert result.exit_code == 2, result.output
    assert option in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [[], ["--operator", "--tenant", "acme"], ["--tenant", "a", "--partner", "p"]]
)
def test_exactly_one_kind(state: Path, args: list[str]) -> None:
    result = run(state, "issue", *args)
    assert result.exit_code == 2
    assert "exactly one of --operator" in result.stderr


def test_issue_without_a_key_says_how_to_make_one(tmp_path: Path) -> None:
    result = run(tmp_path, "issue", "--operator")
    assert result.exit_code == 2
    assert "sgctl tokens keygen" in result.stderr


def test_inspect_shows_the_claims_but_not_the_signature(state: Path) -> None:
    token = run(state, "issue", "--tenant", "acme", "--subject", "alice").stdout.strip()
    signature = token.rsplit(".", 1)[1]
    result = run(state, "inspect", token)
    assert result.exit_code == 0, result.output
    assert "NOT VERIFIED" in result.stderr
    assert "NO (signature not checked)" in result.stdout
    assert "tenant:acme/alice" in result.stdout and "expires in " in result.stdout
    assert signature not in result.output and signature[:12] not in result.output

    as_json = run(state, "inspect", "-o", "json", stdin=token + "\n")
    assert as_json.exit_code == 0, as_json.output
    claims = json.loads(as_json.stdout)
    assert claims["verified"] is False
    assert (claims["kind"], claims["tenant"], claims["sub"]) == ("tenant", "acme", "alice")
    assert signature not in as_json.output


def test_inspect_reads_any_well_formed_token_and_refuses_garbage(
    state: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    run(other, "keygen")
    foreign = run(other, "issue", "--partner", "jv", "--ttl", "1s").stdout.strip()
    result = run(state, "inspect", "-", stdin=foreign)
    assert result.exit_code == 0, result.output
    assert "partner:jv/cli" in result.stdout
    bad = run(state, "inspect", "sg1.not.atoken")
    assert bad.exit_code == 2
    assert "malformed token" in bad.stderr and "not.atoken" not in bad.stderr


def test_help_has_examples() -> None:
    for command in ([], ["keygen"], ["issue"], ["inspect"]):
        result = CliRunner().invoke(tokens, [*command, "--help"])
        assert result.exit_code == 0
        assert "Examples:" in result.stdout
        assert "sgctl tokens" in result.stdout
