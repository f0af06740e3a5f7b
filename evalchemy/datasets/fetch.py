"""Fetching datasets from the hub for an export, on a connected machine only: a task's hub dataset, or a dataset
entry's ``source``, saved with ``save_to_disk`` (staged, then renamed into place)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from evalchemy.config.model import TaskEntry
from evalchemy.datasets.local import DataError

logger = logging.getLogger(__name__)


def fetch_hub_copy(task: str, path: str, name: str | None, kwargs: dict, target: Path) -> None:
    """Load an lm-eval task's hub dataset and ``save_to_disk`` it at ``target`` (connected machine only)."""
    what = path + (f" ({name})" if name else "")
    logger.info("task %s: fetching %s into %s", task, what, target)
    _load_and_save(lambda load: load(path, name, **kwargs), target, f"task {task}: cannot fetch {what}")


def _load_and_save(load, target: Path, failure: str) -> None:
    """``load(datasets.load_dataset)``, saved with ``save_to_disk`` at ``target`` (staged, then renamed)."""
    try:
        from datasets import load_dataset
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
        loaded = load(load_dataset)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.fetching"
        shutil.rmtree(staging, ignore_errors=True)
        loaded.save_to_disk(str(staging))
        staging.replace(target)
    except Exception as err:  # noqa: BLE001 - the hub's errors are many; the message carries the cause
        raise DataError(f"{failure}: {type(err).__name__}: {err}; export needs a machine that reaches the hub (or "
                        f"put the data at {target} first)") from None


def fetch_source(entry: TaskEntry, target: Path) -> None:
    """Download the entry's ``dataset.source`` from the hub and ``save_to_disk`` it at ``target`` (connected
    machine only)."""
    spec = entry.dataset
    assert spec is not None and spec.source_repo
    what = spec.source_repo + (f" ({spec.source_subset})" if spec.source_subset else "")
    logger.info("task %s: fetching %s into %s", entry.name, what, target)
    _load_and_save(lambda load: load(spec.source_repo, spec.source_subset, revision=spec.source_revision), target,
                   f"task {entry.name}: cannot fetch {what}")
