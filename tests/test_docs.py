"""Docs that cannot drift: the README's --help block and the help text of every flag."""

from __future__ import annotations

import importlib.util

import click

from evalchemy.cli.app import cli, export_data, import_data
from tests.conftest import PROJECT


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_readme", PROJECT / "scripts" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_help_block_is_current():
    """README.md shows today's --help (regenerate with: .venv/bin/python scripts/sync_readme.py)."""
    sync = _sync_module()
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    assert sync.MARKER in readme
    assert sync.rendered(readme) == readme


def test_every_flag_has_help_text():
    """Each option of the CLI and of the data transfer scripts documents itself."""
    from evalchemy.cli.report_commands import report_command

    for command in (cli, export_data, import_data, report_command()):
        missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
        assert missing == [], command.name
        assert command.help


def test_guide_flags_exist():
    """Every flag the guide names is accepted."""
    names = {opt for p in cli.params for opt in p.opts}
    for flag in ("--endpoint", "--model", "--tokenizer", "--batch-size", "--run-id", "--config", "--output", "--gpu",
                 "--max-length", "--list-benchmarks", "--validate-config", "--dry-run", "--log-level"):
        assert flag in names
