"""A model checkpoint on this machine, run inside the lm-eval worker: ``hf`` (transformers, on CPU or the GPUs of
``--gpu``) and ``vllm`` (vLLM loaded in the worker; built for GPUs, also runs on vLLM's CPU build).

Nothing is served: lm-eval's own ``hf`` / ``vllm`` models load the folder given as the model (``--model PATH``, a
folder with config.json, the weights and the tokenizer files). Both need torch, which the runner's light install does
not have: the worker runs in the engines environment (``$EVALCHEMY_ENGINE_PYTHON``, else the project's
``.venv-engines`` made by ``scripts/setup.sh --real-engines``, else this Python when it has torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from evalchemy.backends.base import Backend
from evalchemy.errors import PreflightError, setting

ENGINE_PYTHON_ENV = "EVALCHEMY_ENGINE_PYTHON"
ENGINES_VENV = Path(__file__).resolve().parents[2] / ".venv-engines"
WEIGHTS = ("*.safetensors", "*.bin", "*.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
CHECK_TIMEOUT_S = 300  # importing torch (and vLLM) on a loaded machine

# Run in the engine's Python: what it can import and which device the model would get.
_ENGINE_CHECK = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    found[name] = getattr(module, "__version__", "?")
import torch
print(json.dumps({"versions": found, "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}))
"""


def engine_python() -> str:
    """The Python the worker runs in for a checkpoint backend."""
    chosen = os.environ.get(ENGINE_PYTHON_ENV)
    if chosen:
        return chosen
    venv_python = ENGINES_VENV / "bin" / "python"
    return str(venv_python) if venv_python.is_file() else sys.executable


def check_folder(path: str | None, name: str) -> Path:
    """The checkpoint folder; PreflightError naming what is missing."""
    if not path:
        raise PreflightError(f"the {name} backend loads a checkpoint folder on this machine: pass "
                             f"{setting('model')} /path/to/checkpoint (config.json, the weights, the tokenizer)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise PreflightError(f"{setting('model')} {path}: not a folder on this machine (the {name} backend loads a "
                             "checkpoint folder; nothing is downloaded)")
    missing = [what for what, present in (
        ("config.json", (folder / "config.json").is_file()),
        ("weights (*.safetensors or *.bin)", any(next(folder.glob(p), None) for p in WEIGHTS)),
        ("tokenizer files (tokenizer.json)", any((folder / f).is_file() for f in TOKENIZER_FILES)),
    ) if not present]
    if missing:
        raise PreflightError(f"{setting('model')} {path}: the checkpoint folder has no {', '.join(missing)}")
    return folder.resolve()


def check_engine(python: str, modules: tuple[str, ...], name: str) -> dict:
    """Import the engine's modules in the worker's Python: {"versions", "cuda_devices"}; PreflightError when not."""
    try:
        done = subprocess.run([python, "-c", _ENGINE_CHECK, *modules], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PreflightError(f"the {name} backend's Python {python} did not start ({err})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PreflightError(f"the {name} backend needs {', '.join(modules)} in the Python the worker runs in "
                             f"({python}): {last}; install them (scripts/setup.sh --real-engines on a CPU machine) or "
                             f"point {ENGINE_PYTHON_ENV} at a Python that has them")
    return json.loads(done.stdout.strip().splitlines()[-1])


class CheckpointBackend(Backend):
    """A checkpoint folder loaded by lm-eval in the worker; subclasses say which lm-eval model and its arguments."""

    runs_here = True
    preflight_kind = "checkpoint"
    engine_modules: ClassVar[tuple[str, ...]] = ("torch", "transformers")

    def worker_python(self) -> str | None:
        return engine_python()

    def settings(self, folder: Path, cuda_devices: int, max_length: int | None):
        """lm-eval's model settings for this checkpoint (plan.ModelSettings)."""
        from evalchemy.plan import ModelSettings

        args = self.model_args(folder, cuda_devices, max_length)
        return ModelSettings(base_url="", model=str(folder), tokenizer=str(folder), tokenized_requests=False,
                             num_concurrent=1, lm_eval_model=self.lm_eval_model, client="lm-eval",
                             local_args=tuple(args.items()))

    def planned_settings(self, model: str | None, gpu: str | None, max_length: int | None):
        gpus = len(gpu.split(",")) if gpu else 0
        return self.settings(Path(model).expanduser().resolve() if model else Path("CHECKPOINT"), gpus, max_length)

    def endpoint_id(self, public_url: str) -> str:
        return f"{self.name}:{public_url}"

    def model_args(self, folder: Path, cuda_devices: int, max_length: int | None) -> dict:
        raise NotImplementedError


class HfBackend(CheckpointBackend):
    name = endpoint_name = "hf"
    description = "a checkpoint folder run with Hugging Face transformers (on CPU, or the GPUs of --gpu)"
    lm_eval_model = "hf"

    def model_args(self, folder: Path, cuda_devices: int, max_length: int | None) -> dict:
        args = {"pretrained": str(folder), "dtype": "auto" if cuda_devices else "float32",
                "device": "cuda" if cuda_devices else "cpu"}
        if max_length:
            args["max_length"] = max_length
        return args


class VllmInProcessBackend(CheckpointBackend):
    name = endpoint_name = "vllm"
    description = "a checkpoint folder loaded by vLLM in the worker process (GPUs; vLLM's CPU build also works)"
    lm_eval_model = "vllm"
    engine_modules = ("torch", "vllm")

    def worker_env(self) -> dict[str, str]:
        # vLLM's CPU build sizes its KV cache from this (GiB; its default, 4, is more than a small model needs);
        # no usage reports from a closed network
        return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1"}

    def model_args(self, folder: Path, cuda_devices: int, max_length: int | None) -> dict:
        args = {"pretrained": str(folder), "dtype": "auto" if cuda_devices else "float32",
                "max_model_len": max_length or 2048, "enforce_eager": not cuda_devices}
        if cuda_devices > 1:
            args["tensor_parallel_size"] = cuda_devices
        return args
