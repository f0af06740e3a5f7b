"""The project's vLLM look-alike (evalchemy/testserver.py) over real HTTP: vLLM's shapes, the documented answer
rule, fault injection, process mode, and one real lm-eval run whose accuracy is recomputed from the rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from evalchemy.testing.server import Answers, TestServer, build_test_tokenizer
from tests.conftest import PROJECT

FAVOURED = ["Paris", "Rome", "서울", "blue"]
ANSWERS = {"favoured": FAVOURED, "favoured_logprob": -0.1, "default_logprob": -2.0,
           "generations": [{"contains": "capital of France?", "text": " Paris\nQuestion: next"},
                           {"contains": "apple", "text": "apple\nmore"},
                           {"contains": "river", "text": "lake"}],
           "default_generation": "I do not know"}

# a tiny multiple-choice task: (question, choices, gold index)
MC = [
    ("What is the capital of France?", ["Paris", "Lyon", "New York City"], 0),
    ("What is the capital of Italy?", ["Paris", "Rome"], 1),  # a tie: lm-eval's argmax takes the first
    ("한국의 수도는 어디입니까?", ["서울", "부산"], 0),
    ("What colour is the sky?", ["deep blue", "green"], 0),  # acc misses it, acc_norm gets it
    ("What is 2 + 2?", ["three", "four"], 1),  # another tie
]
WORDS = [("apple", "apple"), ("river", "river"), ("stone", "stone")]  # generation task: (word, target)
TEXTS = ["Question: Answer: Say the word . Word: I do not know more next lake ,", *(q for q, _, _ in MC),
         *(c for _, cs, _ in MC for c in cs), *(w for w, _ in WORDS)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_test_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", TEXTS)


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


@pytest.fixture
def server(tokenizer_dir):
    with TestServer(tokenizer_dir, "test-model", answers=ANSWERS) as srv:
        yield srv


def call(url: str, body=None, *, method: str | None = None, headers: dict | None = None, raw: bytes | None = None,
         timeout: float = 10) -> tuple[int, object]:
    """One HTTP request; returns (status, parsed JSON or the raw bytes when they are not JSON)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def rule_logprob(token: str) -> float:
    return -0.1 if token in FAVOURED else -2.0


def ll_request(prompt, **extra) -> dict:
    return {"model": "test-model", "prompt": prompt, "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": 1234, "echo": True, **extra}


# -- tokenizer -----------------------------------------------------------------------------------------------------


def test_tokenizer_loads_offline_with_transformers(tokenizer_dir, monkeypatch):
    """AutoTokenizer loads the built folder offline: words (Korean too) are single tokens, punctuation is split
    off, specials are 0-2, unknown words are [UNK], and decoding joins tokens with spaces."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)
    encoded = hf("한국의 수도는 어디입니까? Paris, zebra", add_special_tokens=True).input_ids
    tokens = ["한국의", "수도는", "어디입니까", "?", "Paris", ",", "[UNK]"]
    assert hf.convert_ids_to_tokens(encoded) == tokens
    assert hf.decode(encoded) == "한국의 수도는 어디입니까 ? Paris , [UNK]"
    assert hf("</s>", add_special_tokens=False).input_ids == [2]


def test_tokenizer_is_deterministic(tmp_path):
    """The same words in any order give byte-identical tokenizer files, with ids in sorted word order."""
    first = build_test_tokenizer(tmp_path / "a", TEXTS)
    second = build_test_tokenizer(tmp_path / "b", reversed(TEXTS))
    names = sorted(p.name for p in first.iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    vocab = json.loads((first / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert words[:3] == ["[UNK]", "<s>", "</s>"] and words[3:] == sorted(words[3:])


# -- vLLM's shapes -------------------------------------------------------------------------------------------------


def test_models_has_vllm_shape(tokenizer_dir):
    """GET /v1/models answers vLLM's list: id, object, created, owned_by vllm, root, parent, max_model_len,
    permission; root defaults to the tokenizer folder."""
    with TestServer(tokenizer_dir, "my-model", max_model_len=4096) as srv:
        status, body = call(f"{srv.base_url}/v1/models")
    assert status == 200
    assert body["object"] == "list" and len(body["data"]) == 1
    card = body["data"][0]
    assert set(card) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
    assert (card["id"], card["object"], card["owned_by"], card["parent"]) == ("my-model", "model", "vllm", None)
    assert card["root"] == str(tokenizer_dir) and card["max_model_len"] == 4096
    assert isinstance(card["created"], int)
    assert card["permission"][0]["object"] == "model_permission" and card["permission"][0]["allow_logprobs"]


def test_loglikelihood_request_with_token_ids(server, tok):
    """lm-eval's log-likelihood request: the echoed prompt's logprobs follow the rule (first None), one generated
    </s> is appended, top_logprobs add a favoured word where the token is not favoured, offsets index the text."""
    prompt = ids(tok, "What is the capital of France? Paris")
    status, body = call(server.completions_url, ll_request([prompt]))
    assert status == 200
    assert body["object"] == "text_completion" and body["model"] == "test-model" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    tokens = [tok.id_to_token(i) for i in prompt]
    lp = choice["logprobs"]
    assert lp["tokens"] == tokens + ["</s>"]
    assert lp["token_logprobs"] == [None] + [rule_logprob(t) for t in tokens[1:]] + [-2.0]
    assert lp["top_logprobs"][0] is None
    assert lp["top_logprobs"][-2] == {"Paris": -0.1}  # favoured: greedy
    assert lp["top_logprobs"][1] == {"is": -2.0, "Paris": -0.1}  # not favoured: the first favoured word beats it
    assert lp["top_logprobs"][-1] == {"</s>": -2.0}  # the generated token is the greedy one
    assert choice["text"] == " ".join(tokens)
    assert [choice["text"][o:o + len(t)] for o, t in zip(lp["text_offset"], tokens)] == tokens
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 1,
                             "total_tokens": len(prompt) + 1, "prompt_tokens_details": None}
    assert server.requests == [ll_request([prompt])]


def test_lm_eval_parses_scores_and_greediness(server, tok):
    """lm-eval's own parser reads the sum of the continuation's logprobs from the rule, and is_greedy is true
    exactly when every continuation token is favoured."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    context = ids(tok, "Question: What is the capital of France?\nAnswer:")
    continuations = {"Paris": (-0.1, True), "New York City": (-6.0, False), "deep blue": (-2.1, False)}
    prompts = [context + ids(tok, c) for c in continuations]
    status, body = call(server.completions_url, ll_request(prompts))
    assert status == 200
    parsed = LocalCompletionsAPI.parse_logprobs(body, tokens=prompts, ctxlens=[len(context)] * len(prompts))
    assert [score for score, _ in parsed] == pytest.approx([score for score, _ in continuations.values()])
    assert [greedy for _, greedy in parsed] == [greedy for _, greedy in continuations.values()]


def test_string_and_batched_prompts(server, tok):
    """A string, a list of strings and a list of token-id lists each get one choice per prompt, index in order;
    string prompts are echoed as sent, with character offsets into them."""
    status, body = call(server.completions_url, ll_request("Paris, Rome"))
    assert status == 200
    [choice] = body["choices"]
    assert choice["text"] == "Paris, Rome"
    assert choice["logprobs"]["tokens"] == ["Paris", ",", "Rome", "</s>"]
    assert choice["logprobs"]["text_offset"] == [0, 5, 7, 11]
    assert choice["logprobs"]["token_logprobs"] == [None, -2.0, -0.1, -2.0]

    texts = ["Paris", "green Rome", "서울 부산"]
    for prompt in (texts, [ids(tok, t) for t in texts]):
        status, body = call(server.completions_url, ll_request(prompt))
        assert status == 200
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        assert [c["logprobs"]["tokens"][:-1] for c in body["choices"]] == [t.split() for t in texts]
        assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 3
    assert server.prompts_seen == 7


def test_generation_follows_rules_stop_and_max_tokens(server, tok):
    """Generation: the first matching rule's text (string or token-id prompt), cut before the earliest stop
    string (finish 'stop', stop_reason the string) or at max_tokens ('length'); else the default text."""
    url = server.completions_url
    question = "Question: What is the capital of France?\nAnswer:"

    def generate(prompt, **extra):
        status, body = call(url, {"model": "test-model", "prompt": prompt, "max_tokens": 16, "temperature": 0,
                                  **extra})
        assert status == 200
        return [(c["text"], c["finish_reason"], c["stop_reason"], c["logprobs"]) for c in body["choices"]]

    assert generate(question, stop=["Question:", "\n"]) == [(" Paris", "stop", "\n", None)]
    assert generate([ids(tok, question)], stop=["\n\n", "Question:"]) == [(" Paris\n", "stop", "Question:", None)]
    assert generate(question, max_tokens=2) == [(" Paris\nQuestion", "length", None, None)]
    assert generate(["Say the word apple .", "Say the word river .", "Say the word stone ."], stop="\n") == [
        ("apple", "stop", "\n", None), ("lake", "stop", None, None), ("I do not know", "stop", None, None)]
    _, body = call(url, {"model": "test-model", "prompt": "Word: apple"})  # vLLM's default max_tokens is 16
    assert body["choices"][0]["text"] == "apple\nmore" and body["usage"]["completion_tokens"] == 2


def test_request_errors_look_like_vllm(tokenizer_dir, tok):
    """Unknown model 404, prompt + max_tokens over max_model_len 400 (a prompt of exactly max_model_len tokens with
    max_tokens 1 too), unknown token id, empty prompt and invalid JSON 400, unknown path 404, wrong method 405."""
    with TestServer(tokenizer_dir, "test-model", max_model_len=8) as srv:
        url = srv.completions_url
        assert call(url, {**ll_request("Paris"), "model": "gpt-x"}) == (404, {
            "object": "error", "message": "The model `gpt-x` does not exist.", "type": "NotFoundError", "param": None,
            "code": 404})
        status, body = call(url, ll_request([[3] * 8]))
        assert status == 400 and body["type"] == "BadRequestError" and body["code"] == 400
        assert body["message"] == ("This model's maximum context length is 8 tokens. However, you requested 9 "
                                   "tokens (8 in the messages, 1 in the completion). Please reduce the length of "
                                   "the messages or completion.")
        assert call(url, ll_request([[3] * 7]))[0] == 200
        assert call(url, ll_request([[3, 10_000]]))[1]["message"] == "Token id 10000 is out of vocabulary"
        assert call(url, ll_request(""))[0] == 400
        assert call(url, ll_request([]))[0] == 400
        status, body = call(url, raw=b"{not json")
        assert status == 400 and body["object"] == "error"
        status, body = call(f"{srv.base_url}/v1/chat/completions", {})  # vLLM serves chat too; no messages: 400
        assert status == 400 and body["object"] == "error" and body["type"] == "BadRequestError"
        assert call(f"{srv.base_url}/v1", {}) == (404, {"detail": "Not Found"})
        assert call(url) == (405, {"detail": "Method Not Allowed"})
        assert call(f"{srv.base_url}/health") == (200, b"")


# -- tokenizer endpoints -------------------------------------------------------------------------------------------


def test_tokenizer_endpoints_are_off_by_default(server):
    """Without tokenizer_endpoints, /tokenizer_info, /tokenize and /detokenize are 404 (vLLM without
    --enable-tokenizer-info-endpoint), so lm-eval's auto backend does not pick 'remote'."""
    from lm_eval.utils import check_remote_tokenizer_support

    assert call(f"{server.base_url}/tokenizer_info")[0] == 404
    assert call(f"{server.base_url}/tokenize", {"prompt": "Paris"})[0] == 404
    assert call(f"{server.base_url}/detokenize", {"tokens": [3]})[0] == 404
    assert check_remote_tokenizer_support(server.completions_url, max_retries=1) is False


def test_tokenizer_endpoints_serve_lm_eval_remote_tokenizer(tokenizer_dir, tok):
    """With tokenizer_endpoints, lm-eval detects remote tokenizer support and its RemoteTokenizer encodes like the
    local tokenizer, decodes with spaces and finds </s> as the end-of-text token."""
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    with TestServer(tokenizer_dir, "test-model", tokenizer_endpoints=True, max_model_len=512) as srv:
        assert call(f"{srv.base_url}/tokenize", {"prompt": "Paris, Rome", "add_special_tokens": True}) == (200, {
            "count": 3, "max_model_len": 512, "tokens": ids(tok, "Paris, Rome"), "token_strs": None})
        status, info = call(f"{srv.base_url}/tokenizer_info")
        assert status == 200 and info["eos_token"] == "</s>" and info["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert check_remote_tokenizer_support(srv.completions_url, max_retries=1) is True
        remote = RemoteTokenizer(srv.completions_url, max_retries=1)
        assert remote.encode("한국의 수도는?") == ids(tok, "한국의 수도는?")
        assert remote.decode(ids(tok, "Paris,Rome")) == "Paris , Rome"
        assert (remote.eos_token_id, remote.bos_token_id) == (2, 1)


# -- faults --------------------------------------------------------------------------------------------------------


def test_fail_first_then_answers(tokenizer_dir):
    """fail_first=2: the first two completions requests get vLLM-style 500 bodies, the third is answered; all three
    are recorded."""
    with TestServer(tokenizer_dir, "test-model", fail_first=2) as srv:
        results = [call(srv.completions_url, ll_request("Paris")) for _ in range(3)]
        assert len(srv.requests) == 3
    assert [status for status, _ in results] == [500, 500, 200]
    assert results[0][1] == {"object": "error", "message": "injected failure", "type": "InternalServerError",
                             "param": None, "code": 500}


def test_fail_status_answers_every_request_with_it(tokenizer_dir):
    """fail_status=503 answers every completions request with 503; /v1/models still works."""
    with TestServer(tokenizer_dir, "test-model", fail_status=503) as srv:
        assert [call(srv.completions_url, ll_request("Paris"))[0] for _ in range(2)] == [503, 503]
        assert call(f"{srv.base_url}/v1/models")[0] == 200


def test_fail_echo_headers_puts_the_request_headers_in_the_error_body(tokenizer_dir, tmp_path):
    """fail_echo_headers alone: every completions request gets a 500 whose message echoes its headers, the
    Authorization header included; with fail_first=1 only the first does. As a process: --fail-echo-headers."""
    headers = {"Authorization": "Bearer sk-echo-123", "X-Test": "yes"}
    with TestServer(tokenizer_dir, "test-model", fail_echo_headers=True) as srv:
        results = [call(srv.completions_url, ll_request("Paris"), headers=headers) for _ in range(2)]
        assert call(f"{srv.base_url}/v1/models")[0] == 200
    assert [status for status, _ in results] == [500, 500]
    body = results[0][1]
    prefix = "injected failure; request headers: "
    assert body["type"] == "InternalServerError" and body["code"] == 500 and body["message"].startswith(prefix)
    echoed = json.loads(body["message"][len(prefix):])
    assert echoed["Authorization"] == "Bearer sk-echo-123" and echoed["X-Test"] == "yes"
    with TestServer(tokenizer_dir, "test-model", fail_first=1, fail_echo_headers=True) as srv:
        first, second = (call(srv.completions_url, ll_request("Paris"), headers=headers) for _ in range(2))
    assert first[0] == 500 and "Bearer sk-echo-123" in first[1]["message"] and second[0] == 200
    proc = _start(tokenizer_dir, tmp_path, "--fail-echo-headers")
    try:
        url = proc.stdout.readline().split()[-1]
        status, body = call(f"{url}/v1/completions", ll_request("Paris"), headers=headers)
    finally:
        _stop(proc)
    assert status == 500 and '"Authorization": "Bearer sk-echo-123"' in body["message"]


def test_malformed_no_logprobs_and_null_text(tokenizer_dir):
    """malformed answers 200 with invalid JSON; no_logprobs answers echo requests with logprobs null; null_text
    answers generations with text null."""
    with TestServer(tokenizer_dir, "test-model", malformed=True) as srv:
        status, body = call(srv.completions_url, ll_request("Paris"))
    assert status == 200 and isinstance(body, bytes) and body.startswith(b'{"choices": [')
    with TestServer(tokenizer_dir, "test-model", no_logprobs=True) as srv:
        status, body = call(srv.completions_url, ll_request("Paris"))
    assert status == 200 and body["choices"][0]["logprobs"] is None
    with TestServer(tokenizer_dir, "test-model", null_text=True) as srv:
        status, body = call(srv.completions_url, {"model": "test-model", "prompt": "Paris", "max_tokens": 4})
    assert status == 200 and body["choices"][0]["text"] is None


def test_empty_text_answers_generations_with_an_empty_string(tokenizer_dir, tmp_path):
    """empty_text (--empty-text as a process) answers generations with text "" and no token generated, stopped;
    log-likelihood requests are answered as usual."""
    request = {"model": "test-model", "prompt": "What is the capital of France?", "max_tokens": 4, "logprobs": 1}
    with TestServer(tokenizer_dir, "test-model", answers=ANSWERS, empty_text=True) as srv:
        status, body = call(srv.completions_url, request)
        assert call(srv.completions_url, ll_request("Paris"))[1]["choices"][0]["logprobs"]["token_logprobs"] \
            == [None, -2.0]
    assert status == 200
    assert {k: body["choices"][0][k] for k in ("text", "finish_reason", "stop_reason")} == \
        {"text": "", "finish_reason": "stop", "stop_reason": None}
    assert body["choices"][0]["logprobs"]["tokens"] == [] and body["usage"]["completion_tokens"] == 0
    proc = _start(tokenizer_dir, tmp_path, "--empty-text")
    try:
        url = proc.stdout.readline().split()[-1]
        assert call(f"{url}/v1/completions", request)[1]["choices"][0]["text"] == ""
    finally:
        _stop(proc)


def test_echo_without_generated_token(tokenizer_dir, tok):
    """echo_without_generated answers an echo request as llama.cpp's server does when the model's next token is
    end-of-text: the prompt's entries only, finish_reason stop, completion_tokens 0; lm-eval's [ctxlen:-1] then
    loses the answer's last token, the echo-checked model reads the whole answer; generations are unchanged."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalchemy.engines.lm_eval.echo_model import EchoCheckedCompletionsAPI

    context = ids(tok, "Question: What is the capital of France?\nAnswer:")
    prompts = [context + ids(tok, "Paris"), context + ids(tok, "deep blue")]
    with TestServer(tokenizer_dir, "test-model", answers=ANSWERS, echo_without_generated=True) as srv:
        status, body = call(srv.completions_url, ll_request(prompts))
        generated = call(srv.completions_url, {"model": "test-model", "prompt": "Paris", "max_tokens": 4})
    assert status == 200
    for choice, prompt in zip(body["choices"], prompts):
        assert choice["logprobs"]["tokens"] == [tok.id_to_token(i) for i in prompt]  # no </s>
        assert choice["logprobs"]["token_logprobs"][1:] == [rule_logprob(tok.id_to_token(i)) for i in prompt[1:]]
        assert choice["finish_reason"] == "stop" and choice["text"] == " ".join(tok.id_to_token(i) for i in prompt)
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == sum(map(len, prompts))
    ctxlens = [len(context)] * 2
    assert LocalCompletionsAPI.parse_logprobs(body, tokens=prompts, ctxlens=ctxlens) == [(0, True), (-2.0, False)]
    assert EchoCheckedCompletionsAPI.parse_logprobs(body, tokens=prompts, ctxlens=ctxlens) == [
        (pytest.approx(-0.1), True), (pytest.approx(-2.1), False)]
    assert generated[0] == 200 and generated[1]["choices"][0]["text"] == "I do not know"


def test_api_key_guards_v1_paths(tokenizer_dir):
    """With api_key, /v1 paths without the right Bearer token get 401 {"error": "Unauthorized"} and are not
    recorded; with it they are answered; /health stays open, as in vLLM."""
    with TestServer(tokenizer_dir, "test-model", api_key="sk-123") as srv:
        assert call(srv.completions_url, ll_request("Paris")) == (401, {"error": "Unauthorized"})
        assert call(f"{srv.base_url}/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert srv.requests == []
        good = {"Authorization": "Bearer sk-123"}
        assert call(srv.completions_url, ll_request("Paris"), headers=good)[0] == 200
        assert call(f"{srv.base_url}/v1/models", headers=good)[0] == 200
        assert call(f"{srv.base_url}/health")[0] == 200
        assert len(srv.requests) == 1


def test_hang_is_bounded_by_stop(tokenizer_dir):
    """hang=30 after one request: the first is answered at once, the second hangs until stop(), which ends it
    quickly (the client sees the connection close, not an answer)."""
    srv = TestServer(tokenizer_dir, "test-model", hang=30, hang_after=1).start()
    outcome: list = []
    try:
        assert call(srv.completions_url, ll_request("Paris"))[0] == 200

        def hanging():
            try:
                outcome.append(call(srv.completions_url, ll_request("Paris"), timeout=20))
            except (OSError, urllib.error.URLError) as err:
                outcome.append(err)

        thread = threading.Thread(target=hanging)
        thread.start()
        deadline = time.monotonic() + 5
        while len(srv.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert outcome == []
    finally:
        started = time.monotonic()
        srv.stop()
    thread.join(timeout=5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)


def test_latency_and_capacity(tokenizer_dir):
    """latency 0.3 s with capacity 1: three concurrent requests are served one at a time (>= 0.9 s); without a
    capacity they overlap (< 0.6 s)."""

    def burst(srv) -> float:
        started = time.monotonic()
        threads = [threading.Thread(target=call, args=(srv.completions_url, ll_request("Paris"))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - started

    with TestServer(tokenizer_dir, "test-model", latency=0.3, capacity=1) as srv:
        assert burst(srv) >= 0.9
        assert len(srv.timings) == 3
    with TestServer(tokenizer_dir, "test-model", latency=0.3) as srv:
        assert burst(srv) < 0.6


def test_capacity_counts_sequences_like_max_num_seqs(tokenizer_dir):
    """capacity 4: three concurrent requests of 2 prompts each never have more than 4 prompts in work at once (two
    requests; the third waits), and a request with more prompts than the capacity takes all of it."""
    body = ll_request(["Paris", "Berlin"])
    with TestServer(tokenizer_dir, "test-model", latency=0.3, capacity=4) as srv:
        threads = [threading.Thread(target=call, args=(srv.completions_url, body)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(srv.timings) == 3
        assert srv.capacity.peak == 4
        big = {**body, "prompt": body["prompt"] * 4}  # 8 prompts
        status, answer = call(srv.completions_url, big)
        assert status == 200 and len(answer["choices"]) == 8
        assert srv.capacity.peak == 4 and srv.capacity.free == 4


def test_die_after_in_process_closes_the_server(tokenizer_dir):
    """die_after=2 in-process: two answers, then the server is gone (connection refused), without ending the test
    process."""
    with TestServer(tokenizer_dir, "test-model", die_after=2) as srv:
        assert [call(srv.completions_url, ll_request("Paris"))[0] for _ in range(2)] == [200, 200]
        with pytest.raises(urllib.error.URLError):
            call(f"{srv.base_url}/v1/models", timeout=2)


def test_answers_reject_unknown_keys():
    """A misspelt answers key is an error naming it, not a silently ignored rule."""
    with pytest.raises(ValueError, match="unknown key.*favourd"):
        Answers.from_dict({"favourd": ["Paris"]})
    with pytest.raises(ValueError, match="generations"):
        Answers.from_dict({"generations": [{"text": "no contains"}]})


# -- process mode --------------------------------------------------------------------------------------------------


def _start(tokenizer_dir, tmp_path, *flags) -> subprocess.Popen:
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(ANSWERS, ensure_ascii=False), encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "evalchemy.testing.server", "--tokenizer", str(tokenizer_dir),
                             "--model-name", "test-model", "--answers", str(answers), "--max-seconds", "60", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()  # by its own pid
        proc.wait()


def test_process_prints_listening_line_and_stops_on_sigterm(tokenizer_dir, tmp_path):
    """As a process: one 'listening on URL' line on stdout, the port in --ready-file, one JSON line per
    completions request in --request-log, a quiet stderr even when a client gives up on a hang, exit 0 on
    SIGTERM."""
    ready, log = tmp_path / "port", tmp_path / "requests.jsonl"
    proc = _start(tokenizer_dir, tmp_path, "--ready-file", str(ready), "--request-log", str(log),
                  "--hang", "5", "--hang-after", "1")
    try:
        line = proc.stdout.readline()
        port = int(ready.read_text())
        assert line == f"listening on http://127.0.0.1:{port}\n"
        url = f"http://127.0.0.1:{port}/v1/completions"
        status, body = call(url, ll_request("Paris"))
        assert status == 200 and body["choices"][0]["logprobs"]["token_logprobs"] == [None, -2.0]
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            call(url, ll_request("Rome"), timeout=0.3)
        assert [json.loads(x)["prompt"] for x in log.read_text(encoding="utf-8").splitlines()] == ["Paris", "Rome"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        _stop(proc)
    assert proc.returncode == 0
    assert out == "" and err == ""


def test_process_die_after_exits_1(tokenizer_dir, tmp_path):
    """--die-after 1: the process answers one completions request, then exits with status 1 on its own."""
    proc = _start(tokenizer_dir, tmp_path, "--die-after", "1")
    try:
        url = proc.stdout.readline().split()[-1]
        assert call(f"{url}/v1/completions", ll_request("Paris"))[0] == 200
        proc.wait(timeout=10)
    finally:
        _stop(proc)
    assert proc.returncode == 1


def test_process_stops_after_max_seconds(tokenizer_dir, tmp_path):
    """--max-seconds bounds a forgotten server: it exits 0 by itself."""
    proc = subprocess.Popen([sys.executable, "-m", "evalchemy.testing.server", "--tokenizer", str(tokenizer_dir),
                             "--max-seconds", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=PROJECT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == 0 and out.startswith("listening on http://127.0.0.1:") and err == ""


# -- real lm-eval --------------------------------------------------------------------------------------------------


def expected_mc(tok) -> dict[str, float]:
    """acc and acc_norm recomputed from the rule: score = sum of the continuation tokens' logprobs; acc_norm
    divides by the choice's length in characters; ties go to the first choice (numpy's argmax)."""
    acc = acc_norm = 0
    for _, choices, gold in MC:
        scores = [sum(rule_logprob(t) for t in tok.encode(c, add_special_tokens=False).tokens) for c in choices]
        normed = [s / len(c) for s, c in zip(scores, choices)]
        acc += scores.index(max(scores)) == gold
        acc_norm += normed.index(max(normed)) == gold
    return {"acc": acc / len(MC), "acc_norm": acc_norm / len(MC)}


def expected_generation() -> float:
    """The first rule whose 'contains' is in the prompt, cut at the task's stop string, equals the target."""
    hits = 0
    for word, target in WORDS:
        text = next((r["text"] for r in ANSWERS["generations"] if r["contains"] in f"Say the word {word}."),
                    ANSWERS["default_generation"])
        hits += text.split("\n")[0] == target
    return hits / len(WORDS)


LM_EVAL_SCRIPT = textwrap.dedent("""
    import json, sys
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    url, tokenizer, tasks_dir, out = sys.argv[1:]
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": url, "model": "test-model", "tokenizer": tokenizer,
                    "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_retries": 1,
                    "timeout": 30},
        tasks=["ts_capitals", "ts_words"], batch_size=4, log_samples=False,
        task_manager=TaskManager(include_defaults=False, include_path=tasks_dir))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results["results"], f, default=handle_non_serializable)
""")


def _write_tasks(folder: Path) -> Path:
    tasks = folder / "tasks"
    tasks.mkdir(parents=True)
    mc = folder / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}, ensure_ascii=False) + "\n"
                          for q, c, a in MC), encoding="utf-8")
    words = folder / "words.jsonl"
    words.write_text("".join(json.dumps({"word": w, "target": t}) + "\n" for w, t in WORDS), encoding="utf-8")
    (tasks / "capitals.yaml").write_text(textwrap.dedent(f"""\
        task: ts_capitals
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {mc}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
          - metric: acc_norm
        metadata:
          version: 1
        """), encoding="utf-8")
    (tasks / "words.yaml").write_text(textwrap.dedent(f"""\
        task: ts_words
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {words}
        output_type: generate_until
        test_split: test
        doc_to_text: "Say the word {{{{word}}}}.\\nWord:"
        doc_to_target: target
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 8
        metric_list:
          - metric: exact_match
        metadata:
          version: 1
        """), encoding="utf-8")
    return tasks


def test_real_lm_eval_scores_match_the_rule(tokenizer_dir, tok, tmp_path):
    """lm-eval's local-completions (HF tokenizer from the built folder, token-id prompts, batches of 4) runs a
    multiple-choice and a generation task against the server offline, with the scores the rule predicts, in
    the request shapes DESIGN.md describes."""
    tasks = _write_tasks(tmp_path)
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_PROXY="127.0.0.1",
               HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
               TOKENIZERS_PARALLELISM="false")
    with TestServer(tokenizer_dir, "test-model", answers=ANSWERS) as srv:
        done = subprocess.run([sys.executable, "-c", LM_EVAL_SCRIPT, srv.completions_url, str(tokenizer_dir),
                               str(tasks), str(out)], env=env, capture_output=True, text=True, timeout=240,
                              cwd=tmp_path)
        requests = list(srv.requests)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    expected = expected_mc(tok)
    assert 0 < expected["acc"] < expected["acc_norm"] < 1  # the task tells the two metrics apart
    assert results["ts_capitals"]["acc,none"] == pytest.approx(expected["acc"])
    assert results["ts_capitals"]["acc_norm,none"] == pytest.approx(expected["acc_norm"])
    assert results["ts_words"]["exact_match,none"] == pytest.approx(expected_generation())
    assert 0 < expected_generation() < 1

    loglikelihood = [r for r in requests if r.get("echo")]
    generation = [r for r in requests if not r.get("echo")]
    assert all(r["max_tokens"] == 1 and r["logprobs"] == 1 and r["temperature"] == 0 for r in loglikelihood)
    assert all(isinstance(p, list) and all(isinstance(i, int) for i in p) for r in requests for p in r["prompt"])
    assert sum(len(r["prompt"]) for r in loglikelihood) == sum(len(c) for _, c, _ in MC)
    assert max(len(r["prompt"]) for r in loglikelihood) == 4
    assert sum(len(r["prompt"]) for r in generation) == len(WORDS)
    assert all("\n" in r["stop"] and r["max_tokens"] == 8 for r in generation)


def test_capacity_slots_first_come_first_served_on_the_model_clock():
    """Slots (the capacity model): a waiter granted freed slots starts its latency when they were freed (the
    ``at`` of the release), not when its thread wakes; waiters are served in arrival order, so a small request does
    not overtake a big one that waits for more slots; a stopped server ends a wait with None."""
    from evalchemy.testing.slots import Slots

    slots, closed = Slots(3), threading.Event()
    assert slots.acquire(2, closed)[0] == 2 and slots.acquire(1, closed)[0] == 1 and slots.free == 0
    got = {}

    def wait(name, wanted):
        got[name] = slots.acquire(wanted, closed)

    big = threading.Thread(target=wait, args=("big", 3))
    big.start()
    while not slots._waiting:
        time.sleep(0.01)
    small = threading.Thread(target=wait, args=("small", 1))
    small.start()
    while len(slots._waiting) < 2:
        time.sleep(0.01)
    freed_at = time.monotonic()  # both wait already; the slots are released 0.1 s and 0.2 s later, as freed now
    time.sleep(0.1)
    slots.release(1, freed_at)  # one free: the big waiter (first) needs 3, so the small one must wait too
    time.sleep(0.1)
    assert got == {} and slots.free == 1
    slots.release(2, freed_at)
    big.join(timeout=5)
    assert got["big"] == (3, freed_at) and slots.free == 0
    assert "small" not in got and slots.peak == 3
    closed.set()
    small.join(timeout=5)
    assert got["small"] is None and not slots._waiting
