"""Lease and lost-site settings, and the crash points the fault harness arms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import ControlPlaneConfig, SchedulerConfig
from orchestrator.crashpoints import POINTS, _parse
from orchestrator.errors import InvalidSpecError


def test_the_lease_ends_before_the_site_is_declared_lost() -> None:
    config = ControlPlaneConfig()
    assert config.scheduler.lost_after_seconds == 60
    # the agent stops its attempts (kill grace included) a heartbeat before the site is lost
    assert config.lease_seconds + config.kill_grace_seconds < config.scheduler.lost_after_seconds
    assert config.scheduler.site_stale_after_seconds < config.scheduler.lost_after_seconds


def test_settings_from_the_environment() -> None:
    config = ControlPlaneConfig.from_env(
        {
            "SG_LOST_AFTER": "4",
            "SG_HEARTBEAT_INTERVAL": "0.3",
            "SG_KILL_GRACE": "1",
            "SG_INSECURE": "1",
        }
    )
    assert config.scheduler.lost_after_seconds == 4
    assert config.scheduler.site_stale_after_seconds == 2
    assert config.lease_seconds == pytest.approx(2.7)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SG_LOST_AFTER": "soon"}, "SG_LOST_AFTER.*number of seconds"),
        ({"SG_LOST_AFTER": "-1"}, "SG_LOST_AFTER.*positive"),
        ({"SG_KILL_GRACE": "inf"}, "SG_KILL_GRACE.*positive"),
        ({"SG_LOST_AFTER": "2", "SG_KILL_GRACE": "3"}, "lost_after_seconds.*must exceed"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidSpecError, match=match):
        ControlPlaneConfig.from_env({**env, "SG_INSECURE": "1"})


def test_the_environment_must_choose_tls_or_plaintext() -> None:
    with pytest.raises(InvalidSpecError, match=r"api_tls.*TLS needs a certificate"):
        ControlPlaneConfig.from_env({})
    secure = ControlPlaneConfig.from_env(
        {"SG_TLS_DIR": "/etc/sg/tls", "SG_TOKEN_VERIFY_KEYS": "/k/a.pem,/k/b.pem"}
    ).security
    assert not secure.insecure and secure.auth_enabled
    assert secure.api_tls is not None and secure.api_tls.cert == Path("/etc/sg/tls/api.pem")
    assert secure.agent_tls is not None
    assert secure.agent_tls.key == Path("/etc/sg/tls/control-plane-key.pem")
    assert secure.token_verify_keys == (Path("/k/a.pem"), Path("/k/b.pem"))
    plain = ControlPlaneConfig.from_env({"SG_INSECURE": "1"}).security
    assert plain.insecure and not plain.auth_enabled


def test_a_lost_after_too_short_for_the_lease_is_refused() -> None:
    with pytest.raises(InvalidSpecError, match="kill grace plus two heartbeats"):
        ControlPlaneConfig(scheduler=SchedulerConfig(lost_after_seconds=3.0))


def test_crash_points_are_checked_by_name_and_count() -> None:
    assert _parse("") == {}
    assert _parse("dispatcher.after_send") == {"dispatcher.after_send": 1}
    assert _parse("scheduler.after_commit:3") == {"scheduler.after_commit": 3}
    with pytest.raises(ValueError, match=r"unknown crash point 'dispatcher\.after_sned'"):
        _parse("dispatcher.after_sned")
    with pytest.raises(ValueError, match="count must be >= 1"):
        _parse("dispatcher.after_send:0")


def test_an_armed_crash_point_kills_the_process_at_its_nth_pass() -> None:
    code = (
        "from orchestrator.crashpoints import crash_point\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    crash_point('dispatcher.after_take')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"SG_CRASH_AT": "dispatcher.after_take:3", "PYTHONPATH": "."},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.split() == ["0", "1", "2"]
    assert "dispatcher.after_take" in POINTS
