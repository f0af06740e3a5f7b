"""The preflight's echo check (evalchemy/echo.py) against the project's test server over real HTTP, and the reading
of echoes it picks for servers that omit an end-of-text token."""

from __future__ import annotations

import json
import logging

import orjson
import pytest

from evalchemy.backends import echo_check as echo
from evalchemy.errors import PreflightError, cli_words
from evalchemy.plan import LM_EVAL_MODEL, ModelSettings
from evalchemy.testing.server import TestServer, build_test_tokenizer

TEXTS = [echo.PROBE_TEXT, "Paris Rome"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_test_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", TEXTS)


def _settings(srv: TestServer, tokenizer_dir, **extra) -> ModelSettings:
    return ModelSettings(base_url=srv.completions_url, model="test-model", tokenizer=str(tokenizer_dir), **extra)


def _probe_ids(srv: TestServer) -> list[int]:
    return srv.encode(echo.PROBE_TEXT)


def test_vllm_shape_keeps_local_completions(tokenizer_dir, caplog):
    """A server that echoes the generated end-of-text token (vLLM's shape): the settings are unchanged, after two
    requests shaped as lm-eval's: one whose logit_bias forbids the special tokens, one that forces end-of-text."""
    caplog.set_level(logging.INFO, logger="evalchemy.backends.echo_check")
    with TestServer(tokenizer_dir, "test-model") as srv:
        settings = _settings(srv, tokenizer_dir)
        assert echo.check(settings) is settings
    ids = _probe_ids(srv)
    plain = {"model": "test-model", "prompt": ids, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
             "echo": True}
    # [UNK] <s> </s> are the special tokens, </s> the end-of-text
    assert srv.requests == [{**plain, "logit_bias": {"0": -100, "1": -100, "2": -100}},
                            {**plain, "logit_bias": {"2": 100}}]
    assert settings.lm_eval_model == LM_EVAL_MODEL == "local-completions"
    assert caplog.messages == ["echo check: one entry per prompt token plus the generated one, end-of-text included"]


def test_echo_without_generated_token_picks_the_echo_checked_model(tokenizer_dir, caplog):
    """A server that echoes no generated token after end-of-text (llama.cpp's server): the run is switched to the
    model that reads the prompt's own entries; string prompts are sent as strings."""
    caplog.set_level(logging.INFO, logger="evalchemy.backends.echo_check")
    with TestServer(tokenizer_dir, "test-model", echo_without_generated=True) as srv:
        checked = echo.check(_settings(srv, tokenizer_dir, tokenized_requests=False))
    assert checked.lm_eval_model == echo.ECHO_MODEL == "evalchemy-echo-completions"
    assert [r["prompt"] for r in srv.requests] == [echo.PROBE_TEXT]  # the first answer already showed it
    assert caplog.messages == ["echo check: the server echoes no generated token after end-of-text; "
                               "log-likelihoods are read from the prompt's own entries (lm-eval model "
                               "evalchemy-echo-completions)"]


def test_echo_that_does_not_line_up_is_a_preflight_error(tokenizer_dir):
    """An echo with fewer entries than prompt tokens, or one short while the server says it generated a token
    (llama.cpp without BOS: every entry shifted), stops the preflight (exit 3) naming the check."""
    with TestServer(tokenizer_dir, "test-model") as srv:
        n = len(_probe_ids(srv))
        original = srv.complete

        def short(body, drop):
            status, answer = original(body)
            answer = json.loads(orjson.dumps(answer))  # the server's lists go out as JSON fragments: lists to cut
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                del answer["choices"][0]["logprobs"][key][-drop:]
            answer["choices"][0]["finish_reason"] = "length"
            return status, answer

        srv.complete = lambda body: short(body, 1)
        with pytest.raises(PreflightError) as shifted:
            echo.check(_settings(srv, tokenizer_dir))
        srv.complete = lambda body: short(body, 2)
        with pytest.raises(PreflightError) as fewer:
            echo.check(_settings(srv, tokenizer_dir))
    assert shifted.value.exit_code == 3
    assert str(shifted.value) == (
        f"echo check (a log-likelihood request): the server echoed {n} log-probabilities for a prompt of {n} tokens "
        "(finish_reason 'length'); expected one per prompt token and one for the generated token: the "
        "log-probabilities are shifted by one token (a llama.cpp server that adds no BOS token: start it with "
        "--kv_overrides tokenizer.ggml.add_bos_token=bool:true); multiple-choice scores would be wrong")
    assert cli_words(fewer.value.message) == (
        f"echo check (a log-likelihood request): the server echoed {n - 1} log-probabilities for a prompt of {n} "
        "tokens (finish_reason 'length'); expected one per prompt token and one for the generated token: the "
        "tokenizer does not split the prompt as the server does (pass the model's own --tokenizer); "
        "multiple-choice scores would be wrong")


@pytest.mark.parametrize("fault", [{"fail_status": 500}, {"no_logprobs": True}, {"malformed": True}])
def test_a_server_that_cannot_answer_is_left_to_lm_eval(tokenizer_dir, caplog, fault):
    """An HTTP error, an answer without log-probabilities or invalid JSON: the settings stay, with a warning (the
    run's own requests meet the same fault, with lm-eval's retries, and the benchmark reports it)."""
    with TestServer(tokenizer_dir, "test-model", **fault) as srv:
        settings = _settings(srv, tokenizer_dir)
        assert echo.check(settings) is settings
    reason = {"fail_status": "HTTP 500", "no_logprobs": "the answer has no log-probabilities",
              "malformed": "the answer is not JSON"}
    assert caplog.messages == [f"echo check not finished ({reason[next(iter(fault))]}): multiple-choice scores "
                               "assume the server echoes as vLLM does"]
    assert len(srv.requests) == 1


def test_prompt_entries_reads_both_shapes():
    """The prompt's entries of an echo with the generated token or, after end-of-text, without it."""
    logprobs = {"token_logprobs": [None, -1.0, -2.0, -3.0], "top_logprobs": [None, {"a": -1.0}, {"b": -2.0},
                                                                             {"c": -3.0}]}
    assert echo.prompt_entries({"logprobs": logprobs, "finish_reason": "length"}, 3) == (
        [None, -1.0, -2.0], [None, {"a": -1.0}, {"b": -2.0}])
    assert echo.prompt_entries({"logprobs": logprobs, "finish_reason": "stop"}, 4) == (
        [None, -1.0, -2.0, -3.0], logprobs["top_logprobs"])
    with pytest.raises(echo.EchoShapeError, match=r"^the server echoed 4 log-probabilities for a prompt of 4 tokens "
                                                  r"\(finish_reason 'length'\)"):
        echo.prompt_entries({"logprobs": logprobs, "finish_reason": "length"}, 4)


def test_a_tokenizer_that_does_not_load_skips_the_check(tmp_path, caplog):
    """A tokenizer folder whose tokenizer.json does not load: no request, a warning, the settings unchanged (lm-eval
    loads the same tokenizer and the benchmark reports it)."""
    broken = tmp_path / "tokenizer"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{}", encoding="utf-8")
    with TestServer(build_test_tokenizer(tmp_path / "good", TEXTS), "test-model") as srv:
        settings = _settings(srv, broken)
        assert echo.check(settings) is settings
    assert srv.requests == []
    [message] = caplog.messages
    assert message.startswith(f"echo check skipped: the tokenizer {broken} did not load (Exception: ")
