"""A small, deterministic stand-in for vLLM's OpenAI-compatible server, for tests and benchmarks.

It answers what lm-eval's ``local-completions`` sends, in vLLM's shapes (see DESIGN.md), on 127.0.0.1 only:

- ``GET /v1/models``: one model (plus ``extra_models``) with ``root`` and ``max_model_len``.
- ``POST /v1/completions``: ``prompt`` as a string, a list of strings, token ids, or a list of token-id lists; one
  choice per prompt, ``index`` in order. With ``echo`` + ``logprobs`` (lm-eval's log-likelihood request) it returns
  the prompt's log-probabilities (the first ``None``, as vLLM) plus ONE generated token, ``</s>``, which lm-eval
  drops (``[ctxlen:-1]``). Without ``echo`` it generates text by rule. Like vLLM it refuses (400) a prompt whose
  length plus ``max_tokens`` exceeds ``max_model_len``, an unknown token id and an empty prompt; an unknown model
  is a 404 ``NotFoundError``. Error bodies are vLLM's ``{"object": "error", "message", "type", "param", "code"}``.
- ``POST /v1/chat/completions``: the messages' contents joined by newlines stand for the templated prompt, answered
  by the generation rules below as ``choices[0].message.content`` (no log-probabilities, as chat servers).
  ``chat_template=False``: vLLM's HTTP 400 for a model without a chat template; ``completions_route=False``: a
  chat-only server (LM Studio-like), ``/v1/completions`` is 404; ``chat_route=False``: no chat route.
- Not vLLM: ``ignore_echo`` (echo requests answered as generations), ``reject_token_ids`` / ``one_prompt_per_request``
  (HTTP 400 for token-id prompts / several prompts), ``version_route=False`` (no ``GET /version``, which tells vLLM).
- ``GET /tokenizer_info``, ``POST /tokenize`` and ``POST /detokenize`` only with ``tokenizer_endpoints=True`` (vLLM
  serves them only with ``--enable-tokenizer-info-endpoint``); otherwise they are 404, like every unknown path
  (``{"detail": "Not Found"}``, FastAPI's body). ``GET /health`` answers 200.
- ``api_key``: as vLLM's ``--api-key``, paths under ``/v1`` need ``Authorization: Bearer <key>``, else 401
  ``{"error": "Unauthorized"}``; the other paths (``/health``, ``/tokenize``, ...) stay open.

Behaviour (``answers``, a dict or ``--answers FILE``), simple enough for a test to recompute every score::

    {"favoured": ["Paris", "A"], "favoured_logprob": -0.1, "default_logprob": -2.0,
     "generations": [{"contains": "capital of France", "text": " Paris\\nQuestion"}],
     "default_generation": "I do not know"}

- log-likelihood: every token's log-probability is ``favoured_logprob`` when the token's text (a word or a single
  punctuation character, see ``build_test_tokenizer``) is in ``favoured``, else ``default_logprob``. Each
  ``top_logprobs`` entry holds the chosen token and, when the chosen token's log-probability is below
  ``favoured_logprob``, the alphabetically first favoured word with ``favoured_logprob`` (so lm-eval's
  ``is_greedy`` is false exactly when some token of the continuation is not favoured). The generated ``</s>``
  gets its log-probability by the same rule; being generated, it is the greedy choice (its ``top_logprobs`` hold
  only itself).
- generation: the text of the first ``generations`` rule whose ``contains`` occurs in the prompt, else
  ``default_generation``. The prompt is the string sent, or for token ids the tokens joined with single spaces;
  a rule also matches word by word (both sides split by the tokenizer's pre-tokenizer and joined with single
  spaces), so ``"capital of France?"`` matches a string prompt and the same prompt sent as token ids. Then the
  text is cut before the earliest ``stop`` string (``finish_reason`` ``"stop"``, ``stop_reason`` the string) and
  capped at ``max_tokens`` tokens counted by the tokenizer (``"length"``); a text that ends by itself is
  ``"stop"``. ``max_tokens`` defaults to 16 as in vLLM.

Faults, for tests of an unattended runner (completions requests only): ``fail_first`` (the first N get HTTP 500),
``fail_status`` (every one gets that status), ``hang`` (seconds to wait before answering, once ``hang_after``
requests have arrived; a stop ends the wait), ``malformed`` (200 with invalid JSON), ``no_logprobs``
(``"logprobs": null``), ``null_text`` (generations with ``"text": null``), ``empty_text`` (generations with
``"text": ""``, no token generated, ``finish_reason`` ``"stop"``), ``echo_without_generated`` (echo
requests answered as llama.cpp's server does when the model's next token is end-of-text: the prompt's entries only,
``finish_reason: "stop"``, ``completion_tokens: 0``), ``die_after`` (after N answers the
server dies: in-process it closes its socket and every connection; as a process, with ``--die-after``, it exits
at once with status 1), ``fail_echo_headers`` (the injected HTTP errors' message echoes the request's headers,
``Authorization`` included, as debugging proxies do; alone it makes every completions request such an HTTP 500).
``latency`` (seconds per completions request, the work included) and ``capacity`` (sequences processed at once,
like vLLM's ``max_num_seqs``: a request with k prompts takes k of them, or all when k is larger; the others wait,
first come first served, on the model's clock: see testing/slots.py) model a real server's speed.

In-process::

    with TestServer(tokenizer_dir, "test-model", answers={...}) as srv:
        srv.completions_url; srv.requests  # the parsed bodies of the completions requests, in arrival order

As a process: ``python -m evalchemy.testing.server --tokenizer DIR [--model-name NAME] [--port 0] [--ready-file F]
[--request-log F] [--max-seconds 600] [one flag per option]``. It prints exactly one line, ``listening on
http://127.0.0.1:PORT``, once ready and serves until SIGTERM, SIGINT or ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from itertools import accumulate
from pathlib import Path
from typing import Iterable

from evalchemy.testing.behaviour import Answers, BadRequest, error_body
from evalchemy.testing.completions import DEFAULT_MAX_TOKENS, GENERATED_TOKEN, Completions, picker  # noqa: F401
from evalchemy.testing.http import Handler, QuietHTTPServer
from evalchemy.testing.slots import Slots, prompt_count  # noqa: F401 - re-exported
from evalchemy.testing.tokenizer import BOS, EOS, SPECIALS, UNK, build_test_tokenizer  # noqa: F401 - re-exported

# -- server --------------------------------------------------------------------------------------------------------


class TestServer(Completions):
    """vLLM look-alike on 127.0.0.1. Use as a context manager, or ``start()`` / ``stop()``.

    Attributes tests read: ``port``, ``base_url``, ``completions_url``, ``requests`` (parsed bodies of the
    completions requests, appended under a lock in arrival order), ``timings`` ((arrival, answered) monotonic
    times of each answered completions request), ``prompts_seen``. ``hang`` and the other options are plain
    attributes a test may change while the server runs.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, tokenizer_dir: Path | str, model_name: str = "test-model", *, port: int = 0,
                 root: str | None = None, max_model_len: int = 2048, answers: dict | None = None,
                 latency: float = 0.0, capacity: int | None = None, tokenizer_endpoints: bool = False,
                 fail_first: int = 0, fail_status: int | None = None, hang: float = 0.0, hang_after: int = 0,
                 malformed: bool = False, null_text: bool = False, no_logprobs: bool = False,
                 fail_echo_headers: bool = False, empty_text: bool = False, echo_without_generated: bool = False,
                 die_after: int | None = None, die_exits_process: bool = False, api_key: str | None = None,
                 request_log: Path | str | None = None, extra_models: Iterable[str] = (),
                 completions_route: bool = True, chat_route: bool = True, chat_template: bool = True,
                 ignore_echo: bool = False, reject_token_ids: bool = False, one_prompt_per_request: bool = False,
                 version_route: bool = True):
        from tokenizers import Tokenizer

        tokenizer_dir = Path(tokenizer_dir)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        config_file = tokenizer_dir / "tokenizer_config.json"
        self.tokenizer_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
        self.model_name = model_name
        self.root = root if root is not None else str(tokenizer_dir)
        self.max_model_len = max_model_len
        self.answers = Answers.from_dict(answers)
        self.latency = latency
        self.capacity = Slots(capacity) if capacity else None
        self.tokenizer_endpoints = tokenizer_endpoints
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.hang_after = hang_after
        self.malformed = malformed
        self.null_text = null_text
        self.empty_text = empty_text
        self.no_logprobs = no_logprobs
        self.fail_echo_headers = fail_echo_headers
        self.echo_without_generated = echo_without_generated
        self.die_after = die_after
        self.die_exits_process = die_exits_process
        self.api_key = api_key
        self.request_log = Path(request_log) if request_log else None
        self.extra_models = tuple(extra_models)
        self.completions_route = completions_route  # False: a chat-only server (LM Studio-like): 404 there
        self.chat_route = chat_route
        self.chat_template = chat_template  # False: chat requests get vLLM's "no chat template" 400
        self.ignore_echo = ignore_echo  # answers echo requests as plain generations (no prompt log-probabilities)
        self.reject_token_ids = reject_token_ids  # 400 for a prompt given as token ids (text prompts only)
        self.one_prompt_per_request = one_prompt_per_request  # 400 for a list of several prompts
        self.version_route = version_route  # GET /version as vLLM answers it; False: 404, as servers that are not vLLM
        self.requests: list[dict] = []
        self.timings: list[tuple[float, float]] = []
        self.prompts_seen = 0
        self._vocab: list[str] | None = None
        self._widths: list[int] = []
        self._tables: tuple | None = None
        self._lock = threading.Lock()
        self._answered = 0
        self._closed = threading.Event()  # set by stop() and by an in-process death: ends hangs and waits
        self._connections: set[socket.socket] = set()
        self._httpd = QuietHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

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
                                        name=f"testserver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _stop_listening(self) -> None:
        with self._lock:
            self._closed.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()
            thread.join(timeout=5)
        self._httpd.server_close()

    def stop(self) -> None:
        """Stop listening, end waiting requests and close every open connection. Safe to call twice."""
        self._stop_listening()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "TestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- tokens ------------------------------------------------------------------------------------------------

    def _token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or UNK

    def _vocabulary(self) -> list[str]:
        """Every token id's text (built on first use)."""
        if self._vocab is None:
            self._vocab = [self._token(i) for i in range(self.tokenizer.get_vocab_size(with_added_tokens=True))]
            self._widths = [len(token) + 1 for token in self._vocab]  # the token and the space after it
        return self._vocab

    def _joined(self, ids: list[int]) -> tuple[str, list[int]]:
        """A token-id prompt's text (its tokens joined with single spaces) and each token's offset in it."""
        pick = picker(ids)
        text = " ".join(pick(self._vocabulary()))
        return text, list(accumulate(pick(self._widths), initial=0))[:-1]

    def _echo_tables(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """By token id, a prompt token's serialised entries: its text, log-probability and top_logprobs."""
        if self._tables is None:
            self._tables = self.answers.echoed_json(self._vocabulary())
        return self._tables

    def _decode(self, ids: list[int]) -> str:
        return " ".join(self._token(i) for i in ids)

    def _words(self, text: str) -> str:
        return " ".join(piece for piece, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(text))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def models(self) -> dict:
        now = int(time.time())
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": now, "owned_by": "vllm",
            "root": self.root if name == self.model_name else name, "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}],
        } for name in (self.model_name, *self.extra_models)]}

    def tokenizer_info(self) -> dict:
        """vLLM's ``/tokenizer_info``: the tokenizer's init kwargs (its tokenizer_config.json) and class."""
        info = {key: value for key, value in self.tokenizer_config.items() if key != "added_tokens_decoder"}
        info.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=self.max_model_len)
        info.setdefault("bos_token", BOS)
        info.setdefault("eos_token", EOS)
        return info

    def tokenize(self, body: dict) -> tuple[int, dict]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return 400, error_body("/tokenize needs a string 'prompt' (this server has no chat template)",
                               "BadRequestError", 400)
        ids = self.encode(prompt)
        strs = [self._token(i) for i in ids] if body.get("return_token_strs") else None
        return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": strs}

    def detokenize(self, body: dict) -> tuple[int, dict]:
        try:
            ids = self._check_ids(body.get("tokens") or [])
        except BadRequest as err:
            return 400, error_body(str(err), "BadRequestError", 400)
        return 200, {"prompt": self._decode(ids)}

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _arrived(self, body: dict) -> int:
        with self._lock:
            self.requests.append(body)
            number = len(self.requests)
            if self.request_log:
                with open(self.request_log, "a", encoding="utf-8") as log:
                    log.write(json.dumps(body, ensure_ascii=False) + "\n")
        return number

    def _acquire(self, body: dict) -> tuple[int, float] | None:
        """Take the request's sequence slots (one per prompt): (slots, when its work starts); None when the server
        stopped while it waited."""
        if self.capacity is None:
            return 0, time.monotonic()
        return self.capacity.acquire(prompt_count(body), self._closed)

    def _release(self, slots: int, done: float) -> None:
        """Give back a request's sequence slots, free since ``done``."""
        if self.capacity is not None and slots:
            self.capacity.release(slots, done)

    def _count_answer(self) -> bool:
        """Count an answer about to be sent; True when it is the last one before dying (die_after)."""
        with self._lock:
            self._answered += 1
            return self.die_after is not None and self._answered == self.die_after

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

# -- process -------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evalchemy.testing.server",
                                     description="A deterministic vLLM look-alike for tests (see the module "
                                                 "docstring of evalchemy/testing/server.py).")
    add = parser.add_argument
    add("--tokenizer", metavar="DIR", required=True, type=Path, help="tokenizer folder (with tokenizer.json)")
    add("--model-name", metavar="NAME", default="test-model", help="served model name (default: test-model)")
    add("--extra-model", action="append", default=[], metavar="NAME",
        help="another served model name, listed by /v1/models (repeatable)")
    add("--port", metavar="PORT", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    add("--root", metavar="PATH", help="'root' reported by /v1/models (default: the tokenizer folder)")
    add("--max-model-len", metavar="N", type=int, default=2048,
        help="context length reported and enforced (default 2048)")
    add("--answers", metavar="FILE", type=Path,
        help="JSON file with the behaviour: favoured, favoured_logprob, default_logprob, generations, "
             "default_generation")
    add("--latency", metavar="SECONDS", type=float, default=0.0,
        help="seconds per completions request, the work included")
    add("--capacity", metavar="N", type=int,
        help="completions requests processed at once; the others wait (default: no limit)")
    add("--tokenizer-endpoints", action="store_true", help="serve /tokenizer_info, /tokenize and /detokenize")
    add("--fail-first", metavar="N", type=int, default=0, help="answer the first N completions requests with HTTP 500")
    add("--fail-status", metavar="STATUS", type=int, help="answer every completions request with this HTTP status")
    add("--hang", metavar="SECONDS", type=float, default=0.0,
        help="seconds to wait before answering a completions request")
    add("--hang-after", metavar="N", type=int, default=0, help="hang only after this many completions requests arrived")
    add("--malformed", action="store_true", help="answer completions requests with invalid JSON")
    add("--no-logprobs", action="store_true", help='answer with "logprobs": null')
    add("--null-text", action="store_true", help='answer generations with "text": null')
    add("--fail-echo-headers", action="store_true",
        help="echo the request headers (Authorization included) in the injected HTTP errors; alone: every "
             "completions request gets such an HTTP 500")
    add("--empty-text", action="store_true", help='answer generations with "text": ""')
    add("--echo-without-generated", action="store_true",
        help="answer echo requests without the generated end-of-text token (as llama.cpp's server)")
    add("--die-after", metavar="N", type=int, help="exit with status 1 right after answering N completions requests")
    add("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' under /v1 (default: $TESTSERVER_API_KEY)")
    add("--request-log", metavar="FILE", type=Path,
        help="append each completions request body to this file as a JSON line")
    add("--ready-file", metavar="FILE", type=Path, help="write the port to this file once listening")
    add("--max-seconds", metavar="SECONDS", type=float, default=600.0,
        help="stop by itself after this long (default 600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.tokenizer / "tokenizer.json").is_file():
        parser.error(f"--tokenizer {args.tokenizer}: no tokenizer.json there")
    try:
        answers = json.loads(args.answers.read_text(encoding="utf-8")) if args.answers else None
        server = TestServer(args.tokenizer, args.model_name, port=args.port, root=args.root,
                            max_model_len=args.max_model_len, answers=answers, latency=args.latency,
                            capacity=args.capacity, tokenizer_endpoints=args.tokenizer_endpoints,
                            fail_first=args.fail_first, fail_status=args.fail_status, hang=args.hang,
                            hang_after=args.hang_after, malformed=args.malformed, no_logprobs=args.no_logprobs,
                            null_text=args.null_text, fail_echo_headers=args.fail_echo_headers,
                            die_after=args.die_after, die_exits_process=True,
                            empty_text=args.empty_text,
                            echo_without_generated=args.echo_without_generated,
                            api_key=args.api_key or os.environ.get("TESTSERVER_API_KEY") or None,
                            request_log=args.request_log, extra_models=args.extra_model)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    if args.ready_file:
        partial = args.ready_file.with_name(args.ready_file.name + ".partial")
        partial.write_text(f"{server.port}\n", encoding="utf-8")
        partial.replace(args.ready_file)
    print(f"listening on {server.base_url}", flush=True)
    stop.wait(args.max_seconds)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
