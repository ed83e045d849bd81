"""The reading commands: JSON shapes, help on every command, secrets masked."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from monitor.cli import cli
from tests.conftest import CONFIG, SEEDS, Invoke
from tests.test_docs import _commands

ITEM_KEYS = {"id", "title", "language", "language_confidence", "outlet", "url", "published",
             "translation_status", "translated_title", "link_reason", "link_score"}


def test_stories_json_shape(monitor: Invoke) -> None:
    """`stories --json` lists stories newest first with the documented item fields."""
    monitor("backfill", str(SEEDS))
    stories = json.loads(monitor("stories", "--json").stdout)
    assert {"id", "headline", "first_seen", "last_seen", "topics", "items"} == set(stories[0])
    assert all(set(item) == ITEM_KEYS for s in stories for item in s["items"])
    assert sum(len(s["items"]) for s in stories) == 5
    seen = [s["last_seen"] for s in stories]
    assert seen == sorted(seen, reverse=True)
    assert all(s["topics"] for s in stories)


def test_stories_filter_by_topic(monitor: Invoke) -> None:
    """--topic keeps only stories with an item on that topic."""
    monitor("backfill", str(SEEDS))
    osa = json.loads(monitor("stories", "--topic", "japan-osa", "--json").stdout)
    assert osa and all("japan-osa" in s["topics"] for s in osa)
    none = json.loads(monitor("stories", "--topic", "no-such-topic", "--json").stdout)
    assert none == []


@pytest.mark.parametrize(("text", "language"), [
    ("Japan's defence minister visited Ankara to discuss drone purchases.", "en"),
    ("Den japanske forsvarsministeren besøkte Tyrkia denne uken for å diskutere droner.", "nb"),
    ("防衛省は無人機の調達を加速する方針を固めた。", "ja"),
    ("Japonya Savunma Bakanı, insansız hava araçları için Türkiye'yi ziyaret etti.", "tr"),
])
def test_lang_command(text: str, language: str) -> None:
    """`monitor lang` answers with the pipeline's detector, for one text or each stdin line."""
    runner = CliRunner()
    single = runner.invoke(cli, ["--config", str(CONFIG), "lang", text])
    assert single.stdout.split("\t")[0] == language
    lines = runner.invoke(cli, ["--config", str(CONFIG), "lang", "--json"],
                          input=f"{text}\n{text}\n")
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["language"] for r in rows] == [language, language]
    assert all(0 < r["confidence"] <= 1 for r in rows)


def test_config_show_masks_secrets() -> None:
    """`config show --json` prints the settings and never a password."""
    env = {"MONITOR_SMTP_PASSWORD": "s3cret-smtp",
           "MONITOR_DATABASE_URL": "postgresql://me:s3cret-db@127.0.0.1/x"}
    result = CliRunner().invoke(cli, ["--config", str(CONFIG), "config", "show", "--json"],
                                env=env)
    assert result.exit_code == 0
    assert "s3cret" not in result.output
    shown = json.loads(result.stdout)
    assert shown["database_url"] == "postgresql://me:***@127.0.0.1/x"
    assert shown["digest"]["smtp_password"] == "***"


@pytest.mark.parametrize("command", sorted(_commands(cli)))
def test_every_command_has_help(command: str) -> None:
    """`--help` works on every command."""
    result = CliRunner().invoke(cli, [*command.split(), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_unknown_option_is_a_usage_error() -> None:
    """Usage errors exit 2."""
    assert CliRunner().invoke(cli, ["backfill", "--bogus", "x"]).exit_code == 2
