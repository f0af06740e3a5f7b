"""lm-eval loads this file by path (``!function kmmlu_local.load``); the loader lives in the package."""

from evalchemy.datasets.local import load_task_dataset as load  # noqa: F401
