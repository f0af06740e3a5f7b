"""lm-eval loads this file by path (``!function kmmlu_local.load``); the loader lives in the package."""

from evalchemy.localdata import load_task_dataset as load  # noqa: F401
