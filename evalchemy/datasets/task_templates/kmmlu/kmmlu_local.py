"""lm-eval loads this file by path (``!function kmmlu_local.load``); the loader and the answer reader live in the
package."""

from evalchemy.datasets.answers import answer_letters  # noqa: F401
from evalchemy.datasets.local import load_task_dataset as load  # noqa: F401
