"""Checks of --run-id and --gpu, cheap to import: the control commands run them before anything else."""

from __future__ import annotations

import os
import re
from datetime import datetime

from evalchemy.errors import UsageError, setting

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
GPU_PATTERN = re.compile(r"^[0-9]+(,[0-9]+)*$")


def default_run_id() -> str:
    return f"{datetime.now():%Y%m%d_%H%M%S}_{os.getpid()}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id) or run_id in (".", ".."):
        raise UsageError(
            f"{setting('run-id')} {run_id!r}: use 1 to 128 letters, digits, '.', '_' or '-' (not '.' or '..'); "
            f"it names a folder under {setting('output')}"
        )
    return run_id


def check_gpu(gpu: str | None) -> str | None:
    if gpu is not None and not GPU_PATTERN.match(gpu):
        raise UsageError(f"{setting('gpu')} {gpu!r}: expected GPU ids separated by commas, such as 0 or 0,1")
    return gpu
