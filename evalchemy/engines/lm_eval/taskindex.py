"""Index of lm-eval task names without importing lm-eval.

lm-eval builds its own index by parsing ~14,000 YAML files (5.7 s). The control commands must answer in well under a
second, and the worker only needs the folders of the tasks a run uses, so this module reads the task YAMLs once
(``taskyaml``, libyaml's parser), caches the result per lm-eval version, and answers:

- does a name exist (task, group or tag), and which names are close to it;
- which folders define it (so the worker can build a ``TaskManager`` over just those);
- does it need log-likelihoods (multiple choice), which decides whether a tokenizer is required.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path

from evalchemy import atomic
from evalchemy.engines.lm_eval import taskyaml

logger = logging.getLogger(__name__)

INDEX_FORMAT = 4
LOGLIKELIHOOD_TYPES = {"multiple_choice", "loglikelihood", "loglikelihood_rolling"}
INDEX_KEYS = ("task", "group", "class", "output_type", "tag")  # what scan_folder reads of each task file


@dataclass
class TaskIndex:
    """Where each task, group and tag is defined."""

    tasks: dict[str, dict] = field(default_factory=dict)  # name -> {"dir", "output_type"}
    groups: dict[str, dict] = field(default_factory=dict)  # name -> {"dir", "members"}
    tags: dict[str, list[str]] = field(default_factory=dict)  # tag -> task names

    def knows(self, name: str) -> bool:
        return name in self.tasks or name in self.groups or name in self.tags

    def names(self) -> set[str]:
        return set(self.tasks) | set(self.groups) | set(self.tags)

    def suggestions(self, name: str, limit: int = 3) -> list[str]:
        return difflib.get_close_matches(name, sorted(self.names()), n=limit, cutoff=0.75)

    def leaf_tasks(self, name: str, _seen: set[str] | None = None) -> list[str]:
        """The concrete tasks behind a task, group or tag name, in definition order."""
        seen = _seen if _seen is not None else set()
        if name in seen:
            return []
        seen.add(name)
        if name in self.tasks:
            return [name]
        members = self.groups.get(name, {}).get("members") or self.tags.get(name, [])
        leaves: list[str] = []
        for member in members:
            for leaf in self.leaf_tasks(member, seen):
                if leaf not in leaves:
                    leaves.append(leaf)
        return leaves

    def folders(self, name: str) -> list[str]:
        """Folders whose YAMLs lm-eval needs to build ``name`` (its own, its group's, its members')."""
        found: list[str] = []

        def add(folder: str | None) -> None:
            if folder and folder not in found:
                found.append(folder)

        stack, seen = [name], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in self.tasks:
                add(self.tasks[current]["dir"])
            if current in self.groups:
                add(self.groups[current]["dir"])
                stack.extend(self.groups[current]["members"])
            if current in self.tags:
                stack.extend(self.tags[current])
        return found

    def needs_loglikelihood(self, name: str) -> bool:
        """True when any task behind ``name`` scores by log-likelihood; unknown names count as needing it."""
        leaves = self.leaf_tasks(name)
        if not leaves:
            return True
        return any(self.tasks[leaf].get("output_type", "generate_until") in LOGLIKELIHOOD_TYPES for leaf in leaves)

    def merge(self, other: "TaskIndex") -> None:
        """Add ``other``'s definitions; they take precedence, as lm-eval's include path does."""
        self.tasks.update(other.tasks)
        self.groups.update(other.groups)
        for tag, members in other.tags.items():
            merged = self.tags.setdefault(tag, [])
            merged.extend(m for m in members if m not in merged)


def _members(task) -> list[str]:
    """The names a group's ``task:`` refers to; an inline sub-group (``- group: x`` with its own ``task:``) counts
    as its members, since lm-eval cannot run it by its name."""
    members: list[str] = []
    for item in task if isinstance(task, list) else [task]:
        if isinstance(item, dict):
            names = _members(item.get("task")) if "group" in item else [item.get("task")]
        else:
            names = [item]
        members.extend(n for n in names if isinstance(n, str) and n and n not in members)
    return members


def scan_folder(folder: Path) -> TaskIndex:
    """Index every ``*.yaml`` below ``folder`` (recursively, as lm-eval's include path does)."""
    index = TaskIndex()
    parsed: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            if not filename.endswith(".yaml"):
                continue
            keys = taskyaml.read_config(os.path.join(dirpath, filename), parsed, keys=INDEX_KEYS)
            task, group = keys.get("task"), keys.get("group")
            if "class" not in keys and isinstance(group, str) and group:
                index.groups[group] = {"dir": dirpath, "members": _members(task)}
                continue
            if isinstance(task, str) and task:
                output_type = keys.get("output_type")
                index.tasks[task] = {"dir": dirpath, "file": filename,
                                     "output_type": output_type if isinstance(output_type, str) else "generate_until"}
                tags = keys.get("tag") or []
                for tag in [tags] if isinstance(tags, str) else tags:
                    if not isinstance(tag, str):
                        continue
                    members = index.tags.setdefault(tag, [])
                    if task not in members:
                        members.append(task)
    return index


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's bundled task folder, found without importing lm-eval."""
    spec = util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "tasks"


def lm_eval_version() -> str | None:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def cache_dir() -> Path:
    base = os.environ.get("EVALCHEMY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "evalchemy"
    )
    return Path(base)


def builtin_index() -> TaskIndex:
    """lm-eval's own tasks, from the cache when it matches the installed lm-eval, else scanned and cached."""
    tasks_dir = lm_eval_tasks_dir()
    version = lm_eval_version()
    if tasks_dir is None or version is None:
        logger.warning("lm-eval is not installed: task names are checked against the config's include paths only")
        return TaskIndex()
    cache_file = cache_dir() / f"task_index_v{INDEX_FORMAT}_lm_eval_{version}.json"  # one file per format
    stamp = {"format": INDEX_FORMAT, "version": version, "tasks_dir": str(tasks_dir)}
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        if cached.get("stamp") == stamp:
            return TaskIndex(tasks=cached["tasks"], groups=cached["groups"], tags=cached["tags"])
    except (OSError, ValueError, KeyError):
        pass
    logger.info("indexing lm-eval %s task folders (once per lm-eval version)", version)
    index = scan_folder(tasks_dir)
    try:
        atomic.write_text(
            cache_file, json.dumps({"stamp": stamp, "tasks": index.tasks, "groups": index.groups, "tags": index.tags})
        )
    except OSError as err:
        logger.debug("could not cache the task index in %s: %s", cache_file, err)
    return index


def load_index(include_paths: list[Path]) -> TaskIndex:
    """lm-eval's tasks plus the tasks under ``include_paths`` (which override built-in names)."""
    index = builtin_index()
    for folder in include_paths:
        index.merge(scan_folder(folder))
    return index
