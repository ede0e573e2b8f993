"""RedisConfig: credentials and TLS files from the environment, the checks that catch a
misconfiguration at start-up, and a password that is never shown (the servers: tests/integration/
test_redis_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import ControlPlaneConfig, RedisConfig
from orchestrator.errors import InvalidSpecError

SECRET = "pw-7Hq2x9"


def test_env_gives_user_password_and_tls_files() -> None:
    config = RedisConfig.from_env(
        {
            "SG_REDIS_URL": "rediss://redis.example:6380/0",
            "SG_REDIS_USERNAME": "sg-orch",
            "SG_REDIS_PASSWORD": SECRET,
            "SG_REDIS_CA_CERTS": "ca.pem",
            "SG_REDIS_CERT": "client.pem",
            "SG_REDIS_KEY": "client-key.pem",
        }
    )
    assert (config.username, config.password) == ("sg-orch", SECRET)
    assert (config.ssl_ca_certs, config.ssl_certfile, config.ssl_keyfile) == (
        "ca.pem",
        "client.pem",
        "client-key.pem",
    )


def test_env_reads_the_password_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    config = RedisConfig.from_env(
        {"SG_REDIS_USERNAME": "sg-orch", "SG_REDIS_PASSWORD_FILE": str(secret_file)}
    )
    assert config.password == SECRET


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"SG_REDIS_PASSWORD": SECRET, "SG_REDIS_PASSWORD_FILE": "pw"}, "SG_REDIS_PASSWORD"),
        ({"SG_REDIS_PASSWORD_FILE": "/nonexistent/redis-password"}, "SG_REDIS_PASSWORD_FILE"),
        ({"SG_REDIS_USERNAME": "sg-orch"}, "password"),
        ({"SG_REDIS_URL": f"redis://:{SECRET}@h:6379/0", "SG_REDIS_PASSWORD": "x"}, "password"),
        ({"SG_REDIS_CA_CERTS": "ca.pem"}, "ssl_ca_certs"),
        ({"SG_REDIS_CERT": "client.pem"}, "ssl_certfile"),
        ({"SG_REDIS_URL": "rediss://h:6380/0", "SG_REDIS_CERT": "client.pem"}, "ssl_keyfile"),
        ({"SG_REDIS_URL": "rediss://h:6380/0", "SG_REDIS_KEY": "client-key.pem"}, "ssl_certfile"),
    ],
)
def test_env_misconfiguration_names_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        RedisConfig.from_env(env)
    assert err.value.field == field
    assert SECRET not in str(err.value)


def test_an_empty_password_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(InvalidSpecError, match="empty") as err:
        RedisConfig.from_env({"SG_REDIS_PASSWORD_FILE": str(tmp_path / "pw")})
    assert err.value.field == "SG_REDIS_PASSWORD_FILE"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": f"redis://u:{SECRET}@h:6379/0", "password": SECRET}, "password"),
        ({"url": f"redis://h:6379/0?password={SECRET}", "password": SECRET}, "password"),
        ({"url": f"redis://u:{SECRET}@h:6379/0", "username": "v"}, "username"),
        ({"url": "unix:///run/redis.sock", "ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"},
         "ssl_certfile"),
        ({"url": "rediss://h:6380/0?ssl_cert_reqs=none"}, "redis_url"),
        ({"url": "rediss://h:6380/0?ssl_check_hostname=false"}, "redis_url"),
    ],
)  # fmt: skip
def test_direct_construction_is_checked_too(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        RedisConfig(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    assert SECRET not in str(err.value)


def test_a_bad_url_is_reported_without_its_password() -> None:
    for url in (f"http://u:{SECRET}@h:6379/0", f"redis://u:{SECRET}@/0"):
        with pytest.raises(InvalidSpecError) as err:
            RedisConfig.from_url(url)
        assert err.value.field == "redis_url"
        assert SECRET not in str(err.value)
        assert "u:***@" in str(err.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://sg-orch:{SECRET}@h:6379/0", "redis://sg-orch:***@h:6379/0"),
        (f"rediss://:{SECRET}@h:6380/1", "rediss://:***@h:6380/1"),
        (f"unix://u:{SECRET}@/run/redis.sock?db=2", "unix://u:***@/run/redis.sock?db=2"),
        (f"redis://h:6379/0?db=0&password={SECRET}", "redis://h:6379/0?db=0&password=***"),
        ("redis://sg-orch@h:6379/0", "redis://sg-orch@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_display_url_masks_any_password(url: str, shown: str) -> None:
    config = RedisConfig(url=url, password="other" if "sg-orch@" in url else None)
    assert config.display_url == shown


def test_repr_masks_the_password_wherever_it_is() -> None:
    in_config = RedisConfig(url="redis://h:6379/0", username="sg-orch", password=SECRET)
    in_url = RedisConfig.from_url(f"redis://sg-orch:{SECRET}@h:6379/0")
    for config in (in_config, in_url):
        for shown in (repr(config), str(config), repr(ControlPlaneConfig(redis=config))):
            assert SECRET not in shown
            assert "sg-orch" in shown
    assert "password='***'" in repr(in_config)
    assert "password=None" in repr(RedisConfig())
