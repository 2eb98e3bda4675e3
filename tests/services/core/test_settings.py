"""Settings: env prefix, secret files, URL checks that name the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.clients import redis_url
from services.core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_env_prefix_and_tls_urls(monkeypatch):
    monkeypatch.setenv("VIGIL_REDIS_URL", "rediss://cache.example:6380/2")
    monkeypatch.setenv("VIGIL_DATABASE_URL", "postgresql://u@db.example/vigil?sslmode=require")
    s = Settings()
    assert s.redis_url == "rediss://cache.example:6380/2"
    assert s.database_url.startswith("postgresql+psycopg://")


def test_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "redis_password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("VIGIL_REDIS_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("VIGIL_REDIS_URL", "redis://127.0.0.1:6379/0")
    s = Settings()
    assert s.redis_password == "s3cret"
    assert "s3cret" not in repr(s)
    assert redis_url(s) == "redis://:s3cret@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("VIGIL_REDIS_URL", "http://127.0.0.1:6379"),
        ("VIGIL_DATABASE_URL", "mysql://root@127.0.0.1/x"),
        ("VIGIL_HISTORY_MIN_SEVERITY", "loud"),
        ("VIGIL_BOND_PREFIX", "abl*"),
    ],
)
def test_invalid_settings_name_the_setting(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert env.removeprefix("VIGIL_").lower() in str(err.value).lower()


def test_missing_secret_file_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("VIGIL_DATABASE_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="VIGIL_DATABASE_PASSWORD_FILE"):
        Settings()


def test_worker_refuses_to_start_on_invalid_settings():
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "VIGIL_REDIS_URL": "ftp://nowhere"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "redis_url" in (proc.stdout + proc.stderr).lower()
