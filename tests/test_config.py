"""Configuration: one validation pass that reports every problem with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor import config
from monitor.errors import ConfigError
from tests.conftest import CONFIG


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_shipped_config_is_valid_and_has_two_multilingual_topics() -> None:
    """config.toml loads and its topics cover English, Japanese, Norwegian and Turkish."""
    settings = config.load(CONFIG, environ={})
    names = {t.name for t in settings.topics}
    assert names == {"japan-drones", "japan-osa"}
    drones = next(t for t in settings.topics if t.name == "japan-drones").keywords
    for word in ("drone*", "UAV*", "ドローン", "無人機", "ubemannet", "İHA", "Bayraktar", "MQ-9B"):
        assert word in drones
    osa = next(t for t in settings.topics if t.name == "japan-osa").keywords
    assert "Official Security Assistance" in osa and "政府安全保障能力強化支援" in osa
    assert len(settings.feeds) >= 5


def test_every_problem_is_reported_at_once_with_key_paths(tmp_path: Path) -> None:
    """Unknown keys, wrong types and bad values all appear in one error."""
    path = _write(tmp_path, """
[fetch]
concurrency = "16"
timeout = 5
[digest]
smtp_tls = "ssl"
timezone = "Mars/Olympus"
[[feeds]]
url = "ftp://example.org/feed"
topics = ["nope"]
[bogus]
x = 1
""")
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    text = str(caught.value)
    for fragment in ("fetch.concurrency", "fetch.timeout: unknown key", "digest.smtp_tls",
                     "digest.timezone", "feeds[0].url", "bogus: unknown section"):
        assert fragment in text, fragment
    assert str(path) in text


def test_cross_references_are_checked(tmp_path: Path) -> None:
    """A feed naming an undefined topic is an error once the types are right."""
    path = _write(tmp_path, '[[feeds]]\nurl = "https://a.example/rss"\ntopics = ["nope"]\n')
    with pytest.raises(ConfigError, match=r"feeds\[0\]\.topics: unknown topic 'nope'"):
        config.load(path, environ={})


def test_environment_and_options_override_the_file(tmp_path: Path) -> None:
    """MONITOR_CONFIG picks the file, MONITOR_DATABASE_URL beats it, --database-url beats both."""
    path = _write(tmp_path, '[monitor]\ndatabase_url = "sqlite:///file.db"\n')
    env = {"MONITOR_CONFIG": str(path)}
    assert config.load(environ=env).database_url == "sqlite:///file.db"
    env["MONITOR_DATABASE_URL"] = "sqlite:///env.db"
    assert config.load(environ=env).database_url == "sqlite:///env.db"
    assert config.load(environ=env, database_url="sqlite:///opt.db").database_url == \
        "sqlite:///opt.db"


def test_secrets_never_show(tmp_path: Path) -> None:
    """The SMTP password and a database password are masked in describe()."""
    env = {"MONITOR_SMTP_PASSWORD": "hunter2-smtp",
           "MONITOR_DATABASE_URL": "postgresql://u:hunter2-db@localhost/x"}
    described = str(config.load(CONFIG, environ=env).describe())
    assert "hunter2" not in described
    assert "***" in described


def test_missing_and_unparseable_files_name_the_file(tmp_path: Path) -> None:
    """A missing file and broken TOML each give one line naming the file."""
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        config.load(tmp_path / "nope.toml", environ={})
    bad = _write(tmp_path, "[fetch\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad, environ={})


def test_passwords_in_urls_are_redacted() -> None:
    """redact_url hides only the password."""
    assert config.redact_url("postgresql://me:pw@h:5432/db") == "postgresql://me:***@h:5432/db"
    assert config.redact_url("sqlite:///data/monitor.db") == "sqlite:///data/monitor.db"
