"""The one probe of the local Hugging Face caches: is a hub tokenizer or a prepared hub dataset on this machine?

The folders follow the libraries' own rules, read from the environment at call time (``huggingface_hub.constants``
and ``datasets.config`` compute them once, at import, and importing ``datasets`` costs seconds):

- hub cache: ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, where ``HF_HOME`` defaults to
  ``$XDG_CACHE_HOME/huggingface`` (``~/.cache/huggingface``);
- datasets cache: ``HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` (and so ``transformers``) keeps downloaded repos, as it would compute it now."""
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = _expand(os.environ.get("HF_HOME", os.path.join(xdg, "huggingface")))
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))
    return Path(_expand(os.environ.get("HF_HUB_CACHE", legacy)))


def datasets_cache_dir() -> Path:
    """Where ``datasets`` keeps prepared datasets, as it would compute it now (it expands ``~`` only)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    home = os.path.expanduser(os.environ.get("HF_HOME", os.path.join(xdg, "huggingface")))
    return Path(os.path.expanduser(os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets")))


def cached_tokenizer(repo_id: str) -> str | None:
    """The cached path of a tokenizer file of hub repo ``repo_id`` (its ``main`` snapshot), or None: a
    ``models--org--name`` folder without tokenizer files is no tokenizer."""
    if "/" not in repo_id or repo_id.startswith(("/", ".")) or repo_id.count("/") > 1:
        return None
    cache = hub_cache_dir()
    if not (cache / ("models--" + repo_id.replace("/", "--"))).is_dir():
        return None  # the common case, answered without importing huggingface_hub
    from huggingface_hub import try_to_load_from_cache

    for filename in TOKENIZER_FILES:
        try:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        except ValueError:  # not a valid repo id (HFValidationError)
            return None
        if isinstance(found, str):
            return found
    return None


def datasets_cached(repo_id: str, name: str | None = None) -> bool:
    """Whether ``datasets`` can load the hub dataset offline: its prepared copy in the datasets cache
    (``<org>___<name>/<config>/``), which an online ``load_dataset`` leaves behind. The hub cache alone
    (``hub/datasets--org--name``) is not enough: offline, ``load_dataset`` reads only the datasets cache."""
    datasets_cache = datasets_cache_dir()
    folder_name = repo_id.replace("/", "___")
    for folder in (datasets_cache / folder_name, datasets_cache / folder_name.lower()):
        if not folder.is_dir():
            continue
        configs = [c.name for c in folder.iterdir() if c.is_dir()]
        if name is None and configs:
            return True
        if any(c == name or c.startswith(f"{name}-") for c in configs):
            return True
    return False
