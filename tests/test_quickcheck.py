"""The fast config check says 'valid' only where jsonschema does, and a valid config never imports jsonschema."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
from jsonschema import Draft202012Validator

from evalchemy.config.model import load_schema
from evalchemy.config.quickcheck import certainly_valid
from tests.conftest import PROJECT

SCHEMA = load_schema()
CONFIGS = sorted((PROJECT / "configs").glob("*.json"))


def _mutations(doc: dict):
    """Documents near a valid one: every value replaced by odd values of every JSON type, keys added and removed."""
    odd = [None, True, 1, 1.0, 0, -1, 10**9, 2.5, "", "x" * 300, "bad name!", [], ["a", "a"], [1, 1.0], {}, {"z": 1}]

    def walk(node, path):
        yield path
        if isinstance(node, dict):
            for key, child in node.items():
                yield from walk(child, (*path, key))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                yield from walk(child, (*path, i))

    for path in list(walk(doc, ())):
        for value in odd:
            mutated = copy.deepcopy(doc)
            if not path:
                yield value
                continue
            parent = mutated
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = value
            yield mutated
        if path and isinstance(path[-1], str):
            mutated = copy.deepcopy(doc)
            parent = mutated
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]
            parent["unknown_key"] = 1
            yield mutated


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_valid_configs_are_known_valid_and_near_misses_never_are(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    validator = Draft202012Validator(SCHEMA)
    assert validator.is_valid(doc) and certainly_valid(SCHEMA, doc)
    checked = disagreements = 0
    for mutated in _mutations(doc):
        checked += 1
        if certainly_valid(SCHEMA, mutated):
            assert validator.is_valid(mutated), mutated
        elif validator.is_valid(mutated):
            disagreements += 1  # allowed: jsonschema then decides (e.g. 1.0 as an integer)
    assert checked > 100


@pytest.mark.parametrize("mode", ["--validate-config", "--dry-run", "--list-benchmarks"])
def test_control_commands_import_neither_jsonschema_nor_the_runner(mode):
    """A valid config: jsonschema is not imported, nor the runner (its results, store and worker modules)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "EVALCHEMY_HOME": str(PROJECT)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "evalchemy", mode, "--config",
                           str(PROJECT / "configs" / "demo_config.json")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "evalchemy.config.model" in imported
    assert "jsonschema" not in imported
    assert "evalchemy.execution.runner" not in imported
