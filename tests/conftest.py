"""Shared fixtures: every test runs offline, away from the real results folder and the user's caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalchemy.cli.app import cli
from tests.browser import chromium  # noqa: F401 - the session's one browser, for the report tests

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def index_cache(tmp_path_factory) -> Path:
    """One task-index cache for the whole session (building it costs ~1.5 s)."""
    return tmp_path_factory.mktemp("evalchemy-cache")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, index_cache):
    """No test touches the network, a hub, the real results folder or the user's cache."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("EVALCHEMY_CACHE_DIR", str(index_cache))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("EVALCHEMY_HOME", str(home))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def invoke():
    """Run the CLI in-process; returns click's Result (separate .stdout and .stderr)."""

    def run(*args: str):
        return CliRunner().invoke(cli, list(args), prog_name="run_evalchemy.sh", catch_exceptions=False)

    return run


@pytest.fixture
def write_config(tmp_path):
    """Write a config (a dict, or raw text) to a file and return its path."""

    def write(content, name: str = "eval_config.json") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, indent=2),
                        encoding="utf-8")
        return path

    return write
