"""``sgctl certs init`` and ``sgctl certs issue``, through click's CliRunner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.certs import certs
from orchestrator.cli.main import cli
from orchestrator.errors import InvalidSpecError
from orchestrator.security.certs import certificate_dns_names, certificate_not_after

PKI_FILES = {
    "ca.pem", "ca-key.pem", "control-plane.pem", "control-plane-key.pem", "api.pem", "api-key.pem",
}  # fmt: skip


def printed_paths(output: str) -> list[Path]:
    return [Path(line) for line in output.splitlines()]


def test_init_writes_and_prints_every_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--state-dir", str(tmp_path), "certs", "init", "--api-host", "grid.example.org"]
    )
    assert result.exit_code == 0, result.output
    paths = printed_paths(result.stdout)
    assert {p.name for p in paths} == PKI_FILES
    assert all(p.parent == tmp_path / "certs" and p.is_file() for p in paths)
    for p in paths:
        expected = 0o600 if p.name.endswith("-key.pem") else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == expected, p
    api = (tmp_path / "certs" / "api.pem").read_bytes()
    assert certificate_dns_names(api) == ["api.sovereign-grid", "grid.example.org"]


def test_init_again_keeps_everything(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["certs", "init", "--dir", str(tmp_path / "pki")]
    assert runner.invoke(cli, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "pki").iterdir()}
    again = runner.invoke(cli, args)
    assert again.exit_code == 0
    assert again.stdout == ""
    assert "nothing written" in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "pki").iterdir()} == before
    forced = runner.invoke(cli, [*args, "--force"])
    assert {p.name for p in printed_paths(forced.stdout)} == PKI_FILES
    assert (tmp_path / "pki" / "ca.pem").read_bytes() != before["ca.pem"]


def test_issue_writes_the_site_certificate(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--state-dir", str(tmp_path), "certs", "init"]).exit_code == 0
    result = runner.invoke(
        cli, ["--state-dir", str(tmp_path), "certs", "issue", "--site", "narvik", "--days", "7"]
    )
    assert result.exit_code == 0, result.output
    sites = tmp_path / "certs" / "sites"
    assert printed_paths(result.stdout) == [sites / "narvik.pem", sites / "narvik-key.pem"]
    cert = (sites / "narvik.pem").read_bytes()
    assert certificate_dns_names(cert) == ["narvik.site.sovereign-grid"]
    ca_not_after = certificate_not_after((tmp_path / "certs" / "ca.pem").read_bytes())
    assert certificate_not_after(cert) < ca_not_after


def test_the_default_directory_follows_sg_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner(env={"SG_STATE_DIR": str(tmp_path / "state")}).invoke(certs, ["init"])
    assert result.exit_code == 0, result.output
    assert {p.parent for p in printed_paths(result.stdout)} == {tmp_path / "state" / "certs"}
    monkeypatch.chdir(tmp_path)
    plain = CliRunner(env={"SG_STATE_DIR": None}).invoke(certs, ["init"])
    assert plain.exit_code == 0, plain.output
    assert {p.parent for p in printed_paths(plain.stdout)} == {Path(".sg") / "certs"}
    assert (tmp_path / ".sg" / "certs" / "ca.pem").is_file()


def test_issue_without_a_ca_says_to_run_init(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", "issue", "--site", "narvik", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert str(tmp_path) in result.stderr
    assert "sgctl certs init" in result.stderr
    # the group alone raises the domain error (sgctl turns it into the line and exit code)
    alone = CliRunner().invoke(certs, ["issue", "--site", "narvik", "--dir", str(tmp_path)])
    assert isinstance(alone.exception, InvalidSpecError)


@pytest.mark.parametrize("site_id", ["Narvik", "../x", "a.b"])
def test_issue_refuses_a_bad_site_id(tmp_path: Path, site_id: str) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["certs", "init", "--dir", str(tmp_path)]).exit_code == 0
    result = runner.invoke(cli, ["certs", "issue", "--site", site_id, "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "site_id" in result.stderr
    assert not (tmp_path / "sites").exists()


def test_help_has_examples() -> None:
    for args in (["certs", "--help"], ["certs", "init", "--help"], ["certs", "issue", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0
        assert "Example:" in result.output
        assert "sgctl certs" in result.output
