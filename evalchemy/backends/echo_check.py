"""How a completions server echoes a prompt, checked before anything runs, and how to read an echo.

lm-eval's ``local-completions`` scores a multiple-choice answer from a log-likelihood request (``echo``, ``logprobs``,
``max_tokens: 1``) by slicing the echo with ``token_logprobs[ctxlen:-1]``: it assumes one entry per prompt token and
then exactly one generated token. vLLM always answers that way (an end-of-text token it generates is echoed too).
llama.cpp's server (``--endpoint local``) does not: when the model's most likely next token is end-of-text it
answers ``finish_reason: "stop"`` with no generated entry, so ``[ctxlen:-1]`` drops the answer's own last token; and
without a BOS token every entry is shifted by one, the generated one missing.

``check`` sends one or two tiny log-likelihood requests shaped as lm-eval's: one whose ``logit_bias`` forbids the
special tokens (so an ordinary token is generated), one whose ``logit_bias`` makes end-of-text the generated token.
The echo must hold one entry per prompt token plus the generated one, or (only after end-of-text, ``finish_reason:
"stop"``) the prompt's entries alone; the second shape switches the run to ``ECHO_MODEL``, lm-eval's
``local-completions`` reading each echo with ``prompt_entries`` (evalchemy/engines/lm_eval/echo_model.py, registered in the
worker). Anything else is a PreflightError naming the check. A server that cannot answer the check
(an HTTP error, no log-probabilities) is left to lm-eval's own requests, with their retries, to report.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from evalchemy.errors import PreflightError, setting

logger = logging.getLogger(__name__)

ECHO_MODEL = "evalchemy-echo-completions"  # lm-eval model: local-completions that reads echoes with prompt_entries
PROBE_TEXT = "Question: What is the capital of France?\nAnswer: Paris"
FORCE_BIAS = 100  # the largest logit bias the OpenAI API allows
CHECK_REQUESTS = 2  # what the check sends to a server that echoes as vLLM does (one where the first answer tells: 1)


class EchoShapeError(ValueError):
    """An echo that does not hold the prompt's log-probabilities where lm-eval looks for them."""


def prompt_entries(choice: dict, n_prompt: int) -> tuple[list, list]:
    """(token_logprobs, top_logprobs) of the ``n_prompt`` echoed prompt tokens of one choice of a log-likelihood
    answer: the echo must hold one entry per prompt token, then the generated token's, which is left out. Only after
    end-of-text (``finish_reason: "stop"``) may the generated entry be missing (llama.cpp's server).
    EchoShapeError for any other length."""
    logprobs = choice.get("logprobs") or {}
    token_logprobs = logprobs.get("token_logprobs")
    if not isinstance(token_logprobs, list):
        raise EchoShapeError("the server returned no log-probabilities for an echo request")
    entries = len(token_logprobs)
    if entries != n_prompt + 1 and not (entries == n_prompt and choice.get("finish_reason") == "stop"):
        raise EchoShapeError(
            f"the server echoed {entries} log-probabilities for a prompt of {n_prompt} tokens (finish_reason "
            f"{choice.get('finish_reason')!r}); expected one per prompt token and one for the generated token")
    top = logprobs.get("top_logprobs") or [None] * entries
    return token_logprobs[:n_prompt], top[:n_prompt]


@dataclass(frozen=True)
class EchoShape:
    """What the check found: entries after the prompt's in each answer (None: not asked)."""

    other_token: int | None  # special tokens forbidden: an ordinary token is generated
    end_of_text: int | None  # end-of-text forced

    @property
    def omits_end_of_text(self) -> bool:
        return 0 in (self.other_token, self.end_of_text)


@dataclass(frozen=True)
class _Tokenizer:
    encode: object  # str -> list[int], as lm-eval encodes (no special tokens added)
    eos: int | None
    specials: tuple[int, ...]  # the special tokens' ids (end-of-text among them)


def _tokenizer(path: str) -> _Tokenizer:
    """The tokenizer lm-eval will load: a folder, or a Hugging Face cache id (then through transformers)."""
    folder = Path(path)
    if (folder / "tokenizer.json").is_file():  # the fast path: no transformers import in the runner
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        eos = None
        config = folder / "tokenizer_config.json"
        if config.is_file():
            eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
        specials = tuple(sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special))
        return _Tokenizer(lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
                          tokenizer.token_to_id(eos) if isinstance(eos, str) else None, specials)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)  # found offline by the preflight
    return _Tokenizer(lambda text: tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id,
                      tuple(sorted(set(tokenizer.all_special_ids))))


def encoder(path: str):
    """text -> token ids with the tokenizer at ``path`` (as lm-eval will load it), loaded on first use."""
    loaded: list[_Tokenizer] = []

    def encode(text: str) -> list[int]:
        if not loaded:
            loaded.append(_tokenizer(path))
        return loaded[0].encode(text)

    return encode


def _post(url: str, body: dict, api_key: str | None, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the checked endpoint URL)
        return json.loads(response.read().decode("utf-8"))


def _generated(answer: dict, n_prompt: int, what: str) -> int:
    """Generated entries (1, or 0 after end-of-text) in an echo of ``n_prompt`` tokens; PreflightError otherwise."""
    choice = (answer.get("choices") or [{}])[0]
    if not isinstance((choice.get("logprobs") or {}).get("token_logprobs"), list):
        raise EchoShapeError("the answer has no log-probabilities")
    try:
        entries, _ = prompt_entries(choice, n_prompt)
    except EchoShapeError as err:
        entries = len((choice.get("logprobs") or {}).get("token_logprobs") or [])
        if entries <= 1 < n_prompt:
            raise PreflightError(
                f"echo check ({what}): the server ignores echo: its answer holds {entries} log-probabilities for a "
                f"prompt of {n_prompt} tokens, none of the prompt's, which multiple-choice tasks score; use a server "
                "that echoes them (vLLM), or run generation tasks (a dataset entry's \"mode\": \"generative\")"
            ) from None
        hint = ("the log-probabilities are shifted by one token (a llama.cpp server that adds no BOS token: start "
                "it with --kv_overrides tokenizer.ggml.add_bos_token=bool:true)" if entries == n_prompt else
                f"the tokenizer does not split the prompt as the server does (pass the model's own "
                f"{setting('tokenizer')})")
        raise PreflightError(f"echo check ({what}): {err}: {hint}; multiple-choice scores would be wrong") from None
    return len(choice["logprobs"]["token_logprobs"]) - n_prompt


def check(settings, api_key: str | None = None):
    """The echo check of the endpoint in ``settings`` (plan.ModelSettings): the same settings when the server echoes
    as vLLM does, with ``lm_eval_model=ECHO_MODEL`` when its echo omits an end-of-text token, PreflightError when
    the echo does not line up with the tokens. Needs a local tokenizer (``settings.tokenizer``).

    First request: special tokens forbidden (``logit_bias`` -100), so an ordinary token is generated and a missing
    entry means a shifted echo. Second, unless the first answer already ended without its generated entry:
    end-of-text forced (+100). A server that ignores ``logit_bias`` is checked as far as its answers tell."""
    if settings.tokenizer_backend != "huggingface" or not settings.tokenizer:
        logger.warning("echo check skipped: it needs a local tokenizer (pass --tokenizer); multiple-choice scores "
                       "assume the server echoes as vLLM does")
        return settings
    try:
        tokenizer = _tokenizer(settings.tokenizer)
        ids = tokenizer.encode(PROBE_TEXT)
    except Exception as err:  # noqa: BLE001 - lm-eval loads the same tokenizer, and the benchmark reports why
        logger.warning("echo check skipped: the tokenizer %s did not load (%s: %s)", settings.tokenizer,
                       type(err).__name__, err)
        return settings
    body = {"model": settings.model, "prompt": ids if settings.tokenized_requests else PROBE_TEXT, "temperature": 0,
            "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}

    def ask(bias: dict[int, int], what: str) -> int:
        answer = _post(settings.base_url, {**body, "logit_bias": {str(i): b for i, b in bias.items()}} if bias
                       else body, api_key, settings.timeout)
        return _generated(answer, len(ids), what)

    shape = EchoShape(None, None)
    try:
        shape = replace(shape, other_token=ask({i: -FORCE_BIAS for i in tokenizer.specials},
                                               "a log-likelihood request"))
        if tokenizer.eos is not None and not shape.omits_end_of_text:
            shape = replace(shape, end_of_text=ask({tokenizer.eos: FORCE_BIAS},
                                                   "a log-likelihood request ending in end-of-text"))
    except (OSError, ValueError, AttributeError, TypeError, IndexError) as err:
        reason = (f"HTTP {err.code}" if isinstance(err, urllib.error.HTTPError) else str(err)
                  if isinstance(err, EchoShapeError) else "the answer is not JSON" if isinstance(err, ValueError)
                  else type(err).__name__)
        logger.warning("echo check not finished (%s): multiple-choice scores assume the server echoes as vLLM "
                       "does", reason)
        return settings
    if shape.omits_end_of_text:
        logger.info("echo check: the server echoes no generated token after end-of-text; log-likelihoods are read "
                    "from the prompt's own entries (lm-eval model %s)", ECHO_MODEL)
        return replace(settings, lm_eval_model=ECHO_MODEL)
    if shape.end_of_text is None:
        logger.info("echo check: one entry per prompt token plus the generated one (end-of-text not checked: the "
                    "tokenizer names no end-of-text token)")
    else:
        logger.info("echo check: one entry per prompt token plus the generated one, end-of-text included")
    return settings
