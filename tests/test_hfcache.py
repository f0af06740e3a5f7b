"""The Hugging Face cache probe finds the folders huggingface_hub and datasets would use under the current
environment, and accepts a cached hub repo as a tokenizer only when its tokenizer files are there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalchemy import hfcache

from evalchemy.datasets import availability as data
from evalchemy.backends.openai_completions import TokenizerChoice, resolve_tokenizer
from evalchemy.errors import PreflightError, cli_words

CACHE_VARS = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_DATASETS_CACHE")


def cache_repo(hub: Path, repo_id: str, files: dict[str, str]) -> None:
    """A hub repo as huggingface_hub leaves it: refs/main naming a snapshot that holds the files."""
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abc", encoding="utf-8")
    snapshot = folder / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HOME"])
def test_tokenizer_in_a_relocated_hub_cache_is_found(tmp_path, monkeypatch, variable):
    """A hub cache moved by HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, XDG_CACHE_HOME or HF_HOME is where the tokenizer
    is looked for."""
    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(variable, str(elsewhere))
    hub = {"XDG_CACHE_HOME": elsewhere / "huggingface" / "hub", "HF_HOME": elsewhere / "hub"}.get(variable, elsewhere)
    cache_repo(hub, "org/tok", {"tokenizer.json": "{}", "config.json": "{}"})
    assert hfcache.hub_cache_dir() == hub
    assert resolve_tokenizer("org/tok", None, None, True) == \
        TokenizerChoice("huggingface", "org/tok", "--tokenizer (Hugging Face cache)")
    model = {"id": "org/tok", "root": "/models/not-here"}
    assert resolve_tokenizer(None, model, None, True) == \
        TokenizerChoice("huggingface", "org/tok", "the local Hugging Face cache")


def test_cached_repo_without_tokenizer_files_is_no_tokenizer(tmp_path):
    """A models--org--name folder holding only the model's config is not accepted as a tokenizer."""
    cache_repo(Path(os.environ["HF_HOME"]) / "hub", "org/weights-only", {"config.json": "{}"})
    assert hfcache.cached_tokenizer("org/weights-only") is None
    with pytest.raises(PreflightError) as err:
        resolve_tokenizer("org/weights-only", None, None, True)
    assert cli_words(err.value.message) == (
        "--tokenizer org/weights-only: not a folder on this disk and not in the local Hugging Face cache; nothing is "
        "downloaded: copy the model's tokenizer files here and pass --tokenizer /path/to/folder")
    assert str(err.value).startswith("tokenizer org/weights-only: not a folder")  # the library's own words


def test_datasets_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    """Without HF_HOME, the datasets cache is under XDG_CACHE_HOME, as datasets has it, and the data preflight
    looks there."""
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "huggingface" / "datasets" / "allenai___ai2_arc" / "ARC-Easy" / "0.0.0").mkdir(parents=True)
    assert hfcache.datasets_cached("allenai/ai2_arc", "ARC-Easy")
    info = {"dataset_path": "allenai/ai2_arc", "dataset_name": "ARC-Easy"}
    assert data._problem("arc_easy", info, tmp_path) is None
    assert data._problem("arc_challenge", {**info, "dataset_name": "ARC-Challenge"}, tmp_path) == (
        "task arc_challenge: dataset 'allenai/ai2_arc' (ARC-Challenge) is not on this machine (not a local folder, "
        "not in the Hugging Face datasets cache, no copy in the data folder)")


ENVS = [
    {},
    {"HF_HOME": "~/hf-home"},
    {"XDG_CACHE_HOME": "/x/cache"},
    {"XDG_CACHE_HOME": "/x/cache", "HF_HOME": "/h"},
    {"HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/legacy"},
    {"HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HUB_CACHE": "/new"},
    {"HF_HOME": "/h", "HF_DATASETS_CACHE": "/d"},
]

LIBRARIES = """
import importlib, json, os, sys
import datasets.config, huggingface_hub.constants
for env in json.loads(sys.argv[1]):
    for name in %r:
        os.environ.pop(name, None)
    os.environ.update(env)
    hub = importlib.reload(huggingface_hub.constants).HF_HUB_CACHE
    print(json.dumps([hub, str(importlib.reload(datasets.config).HF_DATASETS_CACHE)]))
""" % (CACHE_VARS,)


def test_folders_agree_with_the_libraries(monkeypatch):
    """For each way of relocating the caches, the probe's folders are the ones huggingface_hub and datasets
    compute themselves."""
    result = subprocess.run([sys.executable, "-c", LIBRARIES, json.dumps(ENVS)], capture_output=True, text=True,
                            timeout=120, check=True)
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    ours = []
    for env in ENVS:
        for name in CACHE_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        ours.append([str(hfcache.hub_cache_dir()), str(hfcache.datasets_cache_dir())])
    assert ours == expected
