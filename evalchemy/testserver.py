"""A small, deterministic stand-in for vLLM's OpenAI-compatible server, for tests and benchmarks.

It answers what lm-eval's ``local-completions`` sends, in vLLM's shapes (see DESIGN.md):

- ``GET /v1/models``: one model with ``root`` and ``max_model_len``.
- ``POST /v1/completions``: ``prompt`` as a string, a list of strings, token ids, or a list of token-id lists; one
  choice per prompt. With ``echo`` + ``logprobs`` it returns prompt log-probabilities (first ``None``, as vLLM) plus
  one generated token, which lm-eval drops.
- ``GET /tokenizer_info``, ``POST /tokenize`` and ``POST /detokenize`` only with ``tokenizer_endpoints=True`` (vLLM
  serves them only with ``--enable-tokenizer-info-endpoint``).

Behaviour (``answers``), simple enough for a test to recompute every score:

- log-likelihood: every token's log-probability is ``favoured_logprob`` (default -0.1) when the token's text is in
  ``favoured``, else ``default_logprob`` (default -2.0);
- generation: the first rule of ``generations`` (``{"contains": s, "text": t}``) whose ``contains`` occurs in the
  prompt gives the text, else ``default_generation``; then ``stop`` strings cut it and ``max_tokens`` caps it.

Faults, for tests of an unattended runner: ``fail_first`` (the first N completions requests get HTTP 500),
``fail_status`` (every one gets that status), ``hang`` (seconds to sleep before answering, once ``hang_after``
requests have been answered), ``malformed``
(invalid JSON), ``no_logprobs`` (``"logprobs": null``), ``null_text`` (generations with ``"text": null``), ``die_after`` (the process exits after N answers), and
``api_key`` (401 without ``Authorization: Bearer <key>``); ``latency`` and ``capacity`` model a real server's speed.

Run it alone with ``python -m evalchemy.testserver --tokenizer DIR``; it prints ``listening on URL`` when ready.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable

SPECIALS = ["[UNK]", "<s>", "</s>"]
PUNCTUATION = "?!.,:;'\"()[]{}"


def build_test_tokenizer(folder: Path, texts: Iterable[str]) -> Path:
    """A Hugging Face fast tokenizer (word level, punctuation split off) covering every word of ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: set[str] = set()
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    for text in texts:
        words.update(piece for piece, _ in pre.pre_tokenize_str(text))
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in sorted(words - set(SPECIALS)):
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    folder.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(folder))
    return folder


@dataclass
class Answers:
    favoured: set[str] = field(default_factory=set)
    favoured_logprob: float = -0.1
    default_logprob: float = -2.0
    generations: list[dict] = field(default_factory=list)
    default_generation: str = "I do not know"

    @classmethod
    def from_dict(cls, data: dict | None) -> "Answers":
        data = dict(data or {})
        data["favoured"] = set(data.get("favoured", ()))
        return cls(**data)

    def logprob(self, token: str) -> float:
        return self.favoured_logprob if token in self.favoured else self.default_logprob

    def generate(self, prompt: str) -> str:
        for rule in self.generations:
            if rule["contains"] in prompt:
                return rule["text"]
        return self.default_generation


def _error(message: str, kind: str, code: int) -> dict:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


class TestServer:
    """vLLM look-alike on 127.0.0.1. Use as a context manager, or ``start()`` / ``stop()``."""

    __test__ = False  # not a pytest test class

    def __init__(self, tokenizer_dir: Path | str, model_name: str = "test-model", *, port: int = 0,
                 root: str | None = None, max_model_len: int = 2048, answers: dict | None = None,
                 latency: float = 0.0, capacity: int | None = None, tokenizer_endpoints: bool = False,
                 fail_first: int = 0, fail_status: int | None = None, hang: float = 0.0, hang_after: int = 0,
                 malformed: bool = False, null_text: bool = False,
                 no_logprobs: bool = False, die_after: int | None = None, api_key: str | None = None,
                 request_log: Path | None = None, extra_models: tuple[str, ...] = ()):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.model_name = model_name
        self.root = root if root is not None else str(tokenizer_dir)
        self.max_model_len = max_model_len
        self.answers = Answers.from_dict(answers)
        self.latency = latency
        self.capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.tokenizer_endpoints = tokenizer_endpoints
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.hang_after = hang_after
        self.malformed = malformed
        self.null_text = null_text
        self.no_logprobs = no_logprobs
        self.die_after = die_after
        self.api_key = api_key
        self.request_log = request_log
        self.extra_models = tuple(extra_models)
        self.requests: list[dict] = []
        self.timings: list[tuple[float, float]] = []  # (arrival, answer sent) of each completions request
        self.prompts_seen = 0
        self._lock = threading.Lock()
        self._answered = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/v1/completions"

    def start(self) -> "TestServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "TestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- behaviour ------------------------------------------------------------------------------------------------

    def _ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return list(prompt)

    def _text(self, ids: list[int]) -> str:
        return " ".join(self.tokenizer.id_to_token(i) or "[UNK]" for i in ids)

    def _choice(self, index: int, prompt, body: dict) -> tuple[dict, int, int]:
        ids = self._ids(prompt)
        if len(ids) > self.max_model_len:
            raise ValueError(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                             f"requested {len(ids)} tokens in the prompt.")
        text = prompt if isinstance(prompt, str) else self._text(ids)
        max_tokens = body.get("max_tokens", 16)
        if body.get("echo"):
            generated = "</s>"
            tokens = [self.tokenizer.id_to_token(i) or "[UNK]" for i in ids] + [generated]
            logprobs = [None] + [self.answers.logprob(t) for t in tokens[1:]]
            top = [None]
            for token, lp in zip(tokens[1:], logprobs[1:]):
                entry = {token: lp}
                if lp < self.answers.favoured_logprob and self.answers.favoured:
                    entry[sorted(self.answers.favoured)[0]] = self.answers.favoured_logprob
                top.append(entry)
            offsets, pos = [], 0
            for token in tokens:
                offsets.append(pos)
                pos += len(token) + 1
            choice = {"index": index, "text": text + " " + generated, "finish_reason": "length",
                      "stop_reason": None, "prompt_logprobs": None,
                      "logprobs": None if self.no_logprobs else {
                          "tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top,
                          "text_offset": offsets}}
            return choice, len(ids), 1
        answer = self.answers.generate(text)
        finish = "length"
        cut = len(answer)
        for stop in body.get("stop") or []:
            if stop and stop in answer:
                cut = min(cut, answer.index(stop))
                finish = "stop"
        answer = answer[:cut]
        out_ids = self.tokenizer.encode(answer, add_special_tokens=False).ids
        if max_tokens and len(out_ids) > max_tokens:
            kept = self.tokenizer.encode(answer, add_special_tokens=False).offsets[max_tokens - 1][1]
            answer, finish = answer[:kept], "length"
        elif finish != "stop":
            finish = "stop"
        return {"index": index, "text": None if self.null_text else answer, "logprobs": None, "finish_reason": finish,
                "stop_reason": None, "prompt_logprobs": None}, len(ids), len(out_ids)

    def complete(self, body: dict) -> tuple[int, dict]:
        if body.get("model") != self.model_name:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
        else:
            return 400, _error("prompt must be a string, a list of strings or token ids", "BadRequestError", 400)
        choices, used_in, used_out = [], 0, 0
        try:
            for i, p in enumerate(prompts):
                choice, n_in, n_out = self._choice(i, p, body)
                choices.append(choice)
                used_in += n_in
                used_out += n_out
        except ValueError as err:
            return 400, _error(str(err), "BadRequestError", 400)
        with self._lock:
            self.prompts_seen += len(prompts)
        return 200, {"id": f"cmpl-{int(time.time() * 1000)}", "object": "text_completion",
                     "created": int(time.time()), "model": self.model_name, "choices": choices,
                     "usage": {"prompt_tokens": used_in, "completion_tokens": used_out,
                               "total_tokens": used_in + used_out}}

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": 1700000000, "owned_by": "vllm",
            "root": self.root if name == self.model_name else name, "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [{"id": "modelperm-test", "object": "model_permission", "created": 1700000000,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}],
        } for name in (self.model_name, *self.extra_models)]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else small answers wait ~40 ms for delayed ACKs, like no real server

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict | bytes) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, _error("Unauthorized", "AuthenticationError", 401))
                    return False
                return True

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._send(200, server.models())
                elif self.path == "/tokenizer_info" and server.tokenizer_endpoints:
                    self._send(200, {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length":
                                     server.max_model_len, "bos_token": "<s>", "eos_token": "</s>"})
                elif self.path == "/health":
                    self._send(200, b"")
                else:
                    self._send(404, _error("Not Found", "NotFoundError", 404))

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                body = self._body()
                if self.path in ("/tokenize", "/detokenize") and server.tokenizer_endpoints:
                    if self.path == "/tokenize":
                        ids = server._ids(body.get("prompt", ""))
                        self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": server.max_model_len})
                    else:
                        self._send(200, {"prompt": server._text(body.get("tokens", []))})
                    return
                if self.path != "/v1/completions":
                    self._send(404, _error("Not Found", "NotFoundError", 404))
                    return
                arrived = time.monotonic()
                with server._lock:
                    server.requests.append(body)
                    number = len(server.requests)
                    if server.request_log:
                        with open(server.request_log, "a", encoding="utf-8") as log:
                            log.write(json.dumps(body) + "\n")
                if server.capacity:
                    server.capacity.acquire()
                try:
                    started = time.monotonic()
                    if server.hang and number > server.hang_after:
                        time.sleep(server.hang)
                    if number <= server.fail_first or server.fail_status:
                        code = server.fail_status or 500
                        answer = code, _error("injected failure", "InternalServerError", code)
                    elif server.malformed:
                        answer = 200, b'{"choices": [ this is not json'
                    else:
                        answer = server.complete(body)
                    # the latency includes the work, as a real server's does
                    time.sleep(max(0.0, server.latency - (time.monotonic() - started)))
                    self._send(*answer)
                finally:
                    if server.capacity:
                        server.capacity.release()
                with server._lock:
                    server.timings.append((arrived, time.monotonic()))
                    server._answered += 1
                    if server.die_after is not None and server._answered >= server.die_after:
                        os._exit(1)

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalchemy.testserver", description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (tokenizer.json)")
    parser.add_argument("--model-name", default="test-model")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--answers", help="JSON file with the behaviour (see the module docstring)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--capacity", type=int)
    parser.add_argument("--tokenizer-endpoints", action="store_true")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-status", type=int)
    parser.add_argument("--hang", type=float, default=0.0)
    parser.add_argument("--hang-after", type=int, default=0)
    parser.add_argument("--malformed", action="store_true")
    parser.add_argument("--no-logprobs", action="store_true")
    parser.add_argument("--null-text", action="store_true")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--request-log", type=Path)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop by itself after this long")
    args = parser.parse_args(argv)
    answers = json.loads(Path(args.answers).read_text(encoding="utf-8")) if args.answers else None
    server = TestServer(args.tokenizer, args.model_name, port=args.port, root=args.root,
                        max_model_len=args.max_model_len, answers=answers, latency=args.latency,
                        capacity=args.capacity, tokenizer_endpoints=args.tokenizer_endpoints,
                        fail_first=args.fail_first, fail_status=args.fail_status, hang=args.hang,
                        hang_after=args.hang_after,
                        malformed=args.malformed, no_logprobs=args.no_logprobs,
                        null_text=args.null_text, die_after=args.die_after,
                        api_key=os.environ.get("TESTSERVER_API_KEY"), request_log=args.request_log)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    if args.ready_file:
        args.ready_file.write_text(str(server.port))
    print(f"listening on {server.base_url}", flush=True)
    stop.wait(args.max_seconds)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
