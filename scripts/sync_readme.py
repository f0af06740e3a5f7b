"""Regenerate the README's --help block from the CLI itself: .venv/bin/python scripts/sync_readme.py

tests/test_docs.py fails when the README's block differs from what this script writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evalchemy.cli.app import cli  # noqa: E402

MARKER = "<!-- the block below is `./run_evalchemy.sh --help`; tests/test_docs.py checks it is current -->"
BLOCK = re.compile(re.escape(MARKER) + r"\n```text\n.*?\n```", re.S)


def help_text() -> str:
    result = CliRunner().invoke(cli, ["--help"], prog_name="run_evalchemy.sh", terminal_width=110)
    return result.stdout.rstrip("\n")


def rendered(readme: str) -> str:
    return BLOCK.sub(lambda _m: f"{MARKER}\n```text\n{help_text()}\n```", readme, count=1)


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(rendered(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"updated {path}")
