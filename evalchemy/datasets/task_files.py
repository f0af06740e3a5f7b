"""The task files evalchemy writes for lm-eval: one per dataset entry (the KMMLU template on that entry's data),
each in a folder named by its content, so runs and machines sharing the cache never overwrite each other's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evalchemy import atomic
from evalchemy.datasets.local import TEMPLATE_DIR


TEMPLATES = {"multiple_choice": "_kmmlu_local_yaml", "generative": "_kmmlu_local_generative_yaml"}


def task_yaml(task: str, data_path: Path, subset: str | None, answers: str, mode: str = "multiple_choice") -> str:
    """The task file for one config entry: the KMMLU template (multiple-choice or generative) on this entry's data."""
    template = TEMPLATE_DIR / "kmmlu" / TEMPLATES[mode]
    style = "" if mode == "multiple_choice" else f" ({mode})"
    lines = [
        f"# Written by evalchemy for the config's task entry {task}: the KMMLU format{style} on local data.",
        f"include: {json.dumps(str(template))}",
        f"task: {json.dumps(task)}",
        "dataset_kwargs:",
        f"  data_path: {json.dumps(str(data_path), ensure_ascii=False)}",
        f"  answers: {json.dumps(answers)}",
    ]
    if subset:
        lines.append(f"  subset: {json.dumps(subset, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def write_task_file(cache_dir: Path, task: str, data_path: Path, subset: str | None, answers: str,
                    write: bool = True, mode: str = "multiple_choice") -> Path:
    """Write the entry's task file into its own folder (named by its content) and return the folder; with
    ``write=False`` only say where it goes (checks that write nothing)."""
    text = task_yaml(task, data_path, subset, answers, mode)
    folder = cache_dir / "local_tasks" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if write:
        write_if_changed(folder / f"{task}.yaml", text)
    return folder


def write_if_changed(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically, unless it already holds it (runs may share the cache)."""
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    atomic.write_text(target, text)
