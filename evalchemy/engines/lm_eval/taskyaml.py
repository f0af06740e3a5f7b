"""The one reader of lm-eval task YAMLs, for the task index and the data preflight.

A real YAML parser (libyaml's ``CSafeLoader`` when PyYAML has it), with lm-eval's ``!function`` and any other tag
read as ``None``: nothing is imported. ``include:`` is followed as lm-eval 0.4.13 does (``_yaml_loader.load_yaml``):
the included files' keys first, the file's own keys win, ``task_list`` not inherited.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

# dataset_path values that name a file format of the datasets library (the data is in dataset_kwargs' data_files)
FILE_BUILDERS = {"json", "csv", "parquet", "arrow", "text"}

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE):  # type: ignore[misc, valid-type]
    """Safe loading; every tag (``!function utils.process_docs``) becomes None."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def read(path: str | Path) -> dict:
    """One task YAML as a dict; ``{}`` when the file cannot be read, is not YAML, holds more than one document or
    is not a mapping (lm-eval skips such files too)."""
    try:
        with open(path, "rb") as handle:
            data = yaml.load(handle.read(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_config(path: str | Path, cache: dict[str, dict] | None = None, _seen: tuple[str, ...] = (),
                keys: tuple[str, ...] | None = None) -> dict:
    """A task YAML with its ``include:`` files merged in (the file's own keys win). ``cache`` keeps parsed files
    across calls (an index build reads each template once); ``keys``, when given, are the only keys read (and
    cached: the index of lm-eval's ~13,000 task files keeps a few keys of each, not their prompts); include cycles
    stop at the repeated file. The dicts returned may be shared with ``cache``: do not change them."""
    path = os.path.normpath(path)
    data = cache.get(path) if cache is not None else None
    if data is None:
        data = read(path)
        if keys is not None:
            data = {key: data[key] for key in (*keys, "include") if key in data}
        if cache is not None:
            cache[path] = data
    includes = data.get("include")
    if includes is None:
        return data
    if path in _seen or len(_seen) >= 10:
        return {k: v for k, v in data.items() if k != "include"}
    merged: dict = {}
    for include in includes if isinstance(includes, list) else [includes]:
        if isinstance(include, str):
            base = read_config(os.path.join(os.path.dirname(path), include), cache, (*_seen, path), keys)
            merged.update({k: v for k, v in base.items() if k not in ("task_list", "include")})
    merged.update({k: v for k, v in data.items() if k != "include"})
    return merged


def task_dataset(task_file: str | Path) -> dict:
    """dataset_path, dataset_name, dataset_kwargs of a task YAML, following ``include:``."""
    data = read_config(task_file)
    return {k: data.get(k) for k in ("dataset_path", "dataset_name", "dataset_kwargs")}
