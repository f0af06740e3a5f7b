"""Copies of lm-eval's hub datasets in the data folder.

An lm-eval task that loads a hub dataset (arc_easy: allenai/ai2_arc, ARC-Easy) runs on a closed machine from the
datasets cache, or from a save_to_disk copy at <data folder>/hub/<repo>/<config or default> that
scripts/export_data.sh makes on a connected machine. With a copy there, the run overrides the task with a task file
that includes lm-eval's own and reads the copy's Arrow files (the splits keep their hub names).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from evalchemy.datasets.task_files import write_if_changed


HUB_DIR = "hub"


def hub_copy_dir(data_dir: Path, dataset_path: str, dataset_name: str | None) -> Path:
    return data_dir / HUB_DIR / dataset_path / (dataset_name or "default")


def is_hub_id(dataset_path: object, home: Path) -> bool:
    """Whether a task's ``dataset_path`` names a hub dataset (not a file builder, not a folder on this machine)."""
    from evalchemy.engines.lm_eval.taskyaml import FILE_BUILDERS

    return isinstance(dataset_path, str) and bool(dataset_path) and dataset_path not in FILE_BUILDERS and \
        not (home / dataset_path).expanduser().exists() and not Path(dataset_path).is_absolute()


class HubTask(NamedTuple):
    task: str
    yaml: Path  # lm-eval's own task file
    dataset_path: str
    dataset_name: str | None
    dataset_kwargs: dict


def hub_tasks(names, index, home: Path) -> list[HubTask]:
    """The concrete lm-eval tasks behind ``names`` whose task file loads a hub dataset."""
    from evalchemy.engines.lm_eval.taskyaml import task_dataset

    found = []
    for name in names:
        for task in index.leaf_tasks(name):
            info = index.tasks.get(task, {})
            if "file" not in info:
                continue
            yaml = Path(info["dir"]) / info["file"]
            dataset = task_dataset(yaml)
            if is_hub_id(dataset["dataset_path"], home):
                kwargs = dataset["dataset_kwargs"] if isinstance(dataset["dataset_kwargs"], dict) else {}
                found.append(HubTask(task, yaml, dataset["dataset_path"], dataset["dataset_name"], kwargs))
    return found


def hub_override_yaml(task: str, original: Path, splits: dict[str, tuple[Path, ...]]) -> str:
    lines = [f"# Written by evalchemy: lm-eval's {task} on the copy of its dataset in the data folder.",
             f"include: {json.dumps(str(original))}",
             f"task: {json.dumps(task)}",
             "dataset_path: arrow",
             "dataset_name: null",
             "dataset_kwargs:",
             "  data_files:"]
    for name, files in splits.items():
        lines.append(f"    {json.dumps(name)}: [{', '.join(json.dumps(str(f), ensure_ascii=False) for f in files)}]")
    return "\n".join(lines) + "\n"


def write_hub_overrides(cache_dir: Path, overrides: dict[str, str], write: bool = True) -> Path:
    """Write {task: yaml text} into one folder named by their content and return it (``write=False``: only the
    folder)."""
    digest = hashlib.sha256("".join(f"{k}\n{v}" for k, v in sorted(overrides.items())).encode()).hexdigest()[:16]
    folder = cache_dir / "hub_copies" / digest
    for task, text in overrides.items() if write else ():
        write_if_changed(folder / f"{task}.yaml", text)
    return folder
