"""Offline data preflight: before the first benchmark starts, every enabled task's dataset must be on this machine
(local files, a local folder, or the Hugging Face datasets cache), so a missing one stops the run with one message instead
of failing benchmark after benchmark after lm-eval has tried the hub."""

from __future__ import annotations

import logging
from pathlib import Path

from evalchemy import hfcache
from evalchemy.engines.lm_eval.taskyaml import FILE_BUILDERS, task_dataset
from evalchemy.errors import setting

logger = logging.getLogger(__name__)



def _files(data_files) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return [f for f in data_files if isinstance(f, str)]
    if isinstance(data_files, dict):
        return [f for value in data_files.values() for f in _files(value)]
    return []


def check_plan_data(plan, index, home: Path, online: bool, config_path: Path | None = None) -> None:
    """PreflightError naming every enabled task whose data is missing or unusable (and what to do), else None.

    Local datasets (``dataset`` entries) are always checked, columns, answers and few-shot examples included; the
    data of lm-eval's own tasks only when offline (``online`` lets lm-eval download it)."""
    from evalchemy.errors import PreflightError

    missing_local, unusable = local_dataset_problems(plan)
    missing_lm_eval = missing_datasets(plan, index, home) if index is not None and not online else []
    missing_hub = [line for line, hub in missing_lm_eval if hub]
    missing_files = [line for line, hub in missing_lm_eval if not hub]
    parts = []
    if missing_local or missing_lm_eval:
        parts.append("datasets missing on this machine" + ("" if online else " (runs are offline)") + ":\n  " +
                     "\n  ".join(missing_local + [line for line, _ in missing_lm_eval]))
    if unusable:
        parts.append("datasets that cannot be used as they are:\n  " + "\n  ".join(unusable))
    if missing_local or missing_hub:
        config = f" --config {config_path}" if config_path else ""
        data_dir = f" --data-dir {plan.data_dir}" if plan.data_dir else ""
        parts.append(f"import them from an archive made on a connected machine: scripts/import_data.sh "
                     f"ARCHIVE{data_dir} (made there with scripts/export_data.sh{config} --output ARCHIVE)")
    if missing_hub:
        parts.append("lm-eval's hub datasets can also come from a copy of the Hugging Face datasets cache, or pass "
                     f"{setting('online')} to let lm-eval download them")
    if missing_files:
        parts.append("the data files a task YAML names must be on this machine: copy them there")
    if parts:
        raise PreflightError("\n".join(parts))


def local_dataset_problems(plan) -> tuple[list[str], list[str]]:
    """(missing, unusable): one line per dataset entry of the plan whose data is absent, or present but unusable."""
    from evalchemy.datasets import local as localdata

    missing: list[str] = []
    unusable: list[str] = []
    for bench in plan.to_run:
        for run in bench.runs:
            if run.dataset is None:
                continue
            try:
                data = localdata.detect(Path(run.data_path), run.dataset.subset)
                counts = localdata.check(data, run.dataset.answers, run.num_fewshot)
                logger.info("task %s: %s data at %s (%s)", run.entry, data.kind, data.path,
                            ", ".join(f"{split} {n} rows" for split, n in counts.items()))
            except localdata.MissingData as err:
                missing.append(f"{bench.name}: task {run.entry}: {err}")
            except localdata.DataError as err:
                unusable.append(f"{bench.name}: task {run.entry}: {err}")
    return missing, unusable


def missing_datasets(plan, index, home: Path) -> list[tuple[str, bool]]:
    """(line, whether it is a hub dataset) per lm-eval task of the plan whose data is not on this machine."""
    problems: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for bench in plan.to_run:
        for run in bench.runs:
            for name in run.tasks if run.dataset is None else ():
                for task in index.leaf_tasks(name):
                    if task in seen or task in run.hub_copies or "file" not in index.tasks.get(task, {}):
                        continue
                    seen.add(task)
                    entry = index.tasks[task]
                    info = task_dataset(Path(entry["dir"]) / entry["file"])
                    problem = _problem(task, info, home, plan.data_dir)
                    if problem:
                        hub = info.get("dataset_path") not in FILE_BUILDERS
                        problems.append((f"{bench.name}: {problem}", hub))
    return problems


def _problem(task: str, info: dict, home: Path, data_dir: Path | None = None) -> str | None:
    path = info.get("dataset_path")
    if not isinstance(path, str) or not path:
        return None  # a custom loader: nothing to check here
    if path in FILE_BUILDERS:
        kwargs = info.get("dataset_kwargs") or {}
        missing = [f for f in _files(kwargs.get("data_files")) if not (home / f).expanduser().exists()]
        return f"task {task}: data file {missing[0]} not found" + \
            (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") if missing else None
    if (home / path).expanduser().exists():
        return None
    name = info.get("dataset_name") if isinstance(info.get("dataset_name"), str) else None
    if hfcache.datasets_cached(path, name):
        return None
    if data_dir is not None:
        from evalchemy.datasets import hub as hubdata, local as localdata

        copy = hubdata.hub_copy_dir(data_dir, path, name)
        if copy.exists():
            try:
                localdata.saved_splits(copy)
            except localdata.DataError as err:
                return f"task {task}: {err}"
    what = f"{path!r}" + (f" ({name})" if name else "")
    return f"task {task}: dataset {what} is not on this machine (not a local folder, not in the Hugging Face " \
        "datasets cache, no copy in the data folder)"
