"""The test server's completions: prompts checked as vLLM checks them, then answered by the behaviour rules."""

from __future__ import annotations

import random
import time
from operator import itemgetter

import orjson

from evalchemy.testing.behaviour import BadRequest, error_body

GENERATED_TOKEN = "</s>"  # the one token an echo request generates after the prompt
DEFAULT_MAX_TOKENS = 16  # vLLM's default for /v1/completions
CHAT_TEMPLATE_MISSING = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide a "
                         "chat template if the tokenizer does not define one.")  # vLLM's words


def _random_hex() -> str:
    """An answer id's 32 hex digits, as vLLM's (not a secret: no system entropy call per answer)."""
    return f"{random.getrandbits(128):032x}"


def picker(ids: list[int]):
    """table -> a tuple of the table's entries at ``ids`` (checked ids), in one call."""
    if len(ids) == 1:
        return lambda table: (table[ids[0]],)
    return itemgetter(*ids) if ids else (lambda table: ())


def _array(items: list[bytes]) -> orjson.Fragment:
    return orjson.Fragment(b"[" + b",".join(items) + b"]")


class Completions:
    """``TestServer``'s completions logic (a mixin: it reads the server's settings and tokenizer)."""

    def _unknown(self, model) -> bool:
        return model is not None and model not in (self.model_name, *self.extra_models)

    def _check_ids(self, ids: list) -> list[int]:
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if ids and set(map(type, ids)) == {int} and min(ids) >= 0 and max(ids) < vocab:
            return list(ids)  # the common case, checked without a Python step per token
        for token_id in ids:
            if not isinstance(token_id, int) or isinstance(token_id, bool):
                raise BadRequest(f"token ids must be integers, got {token_id!r}")
            if not 0 <= token_id < vocab:
                raise BadRequest(f"Token id {token_id} is out of vocabulary")
        return list(ids)

    # -- /v1/completions ---------------------------------------------------------------------------------------

    @staticmethod
    def _prompts(prompt) -> list:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
                return [prompt]
            if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
                return list(prompt)
        raise BadRequest("prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                          "token ids")

    def _check_length(self, n_prompt: int, max_tokens: int | None) -> None:
        """vLLM's rule: the prompt plus max_tokens must fit in max_model_len (so a prompt of exactly
        max_model_len tokens is refused when one token is asked for, as in a log-likelihood request)."""
        limit = self.max_model_len
        if max_tokens is None:
            if n_prompt >= limit:
                raise BadRequest(f"This model's maximum context length is {limit} tokens. However, you requested "
                                  f"{n_prompt} tokens in the messages, Please reduce the length of the messages.")
        elif n_prompt + max_tokens > limit:
            raise BadRequest(f"This model's maximum context length is {limit} tokens. However, you requested "
                              f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the "
                              "completion). Please reduce the length of the messages or completion.")

    def _logprobs(self, ids: list[int], offsets: list[int], generated: list[str]) -> dict:
        """The prompt's tokens (the first has no log-probability, as in vLLM), then the generated ones, which are
        the greedy choice at every step, so their top_logprobs hold only themselves. The lists go out as JSON
        fragments joined from each prompt token's serialised entries (tables by token id, built once)."""
        pick = picker(ids)
        texts, token_logprobs, top = (list(pick(table)) for table in self._echo_tables())
        if ids:
            token_logprobs[0] = top[0] = b"null"
        for token in generated:
            lp = self.answers.logprob(token)
            texts.append(orjson.dumps(token))
            token_logprobs.append(orjson.dumps(lp))
            top.append(orjson.dumps({token: lp}))
        return {"tokens": _array(texts), "token_logprobs": _array(token_logprobs), "top_logprobs": _array(top),
                "text_offset": offsets}

    def _choice(self, index: int, prompt, body: dict) -> tuple[dict, int, int]:
        if isinstance(prompt, str):
            encoding = self.tokenizer.encode(prompt, add_special_tokens=False)
            ids, offsets, text = encoding.ids, [start for start, _ in encoding.offsets], prompt
        else:
            ids = self._check_ids(prompt)
            text, offsets = self._joined(ids)
        if not ids:
            raise BadRequest("The prompt cannot be empty")
        max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
            raise BadRequest(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
        self._check_length(len(ids), max_tokens)
        if max_tokens is None:
            max_tokens = self.max_model_len - len(ids)
        want_logprobs = body.get("logprobs") is not None and not self.no_logprobs
        choice = {"index": index, "text": None, "logprobs": None, "finish_reason": None, "stop_reason": None,
                  "prompt_logprobs": None}

        if body.get("echo"):
            # vLLM: the prompt echoed, then the generated token (</s>, a special token: no text); llama.cpp's server
            # (echo_without_generated) stops at </s> without echoing it
            ends = max_tokens >= 1
            generated = [GENERATED_TOKEN] if ends and not self.echo_without_generated else []
            choice["text"] = text
            choice["finish_reason"] = "stop" if ends else "length"
            if want_logprobs:
                choice["logprobs"] = self._logprobs(ids, offsets + [len(text)] * len(generated), generated)
            return choice, len(ids), len(generated)

        answer = self.answers.generate(text, self._words)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        finish, stop_reason = "stop", None
        hits = [(answer.index(s), s) for s in stops if isinstance(s, str) and s and s in answer]
        if hits:
            cut, stop_reason = min(hits)
            answer = answer[:cut]
        if self.empty_text:
            answer, stop_reason = "", None
        encoding = self.tokenizer.encode(answer, add_special_tokens=False)
        n_out = len(encoding.ids)
        if n_out > max_tokens:
            answer = answer[:encoding.offsets[max_tokens - 1][1]] if max_tokens else ""
            encoding = self.tokenizer.encode(answer, add_special_tokens=False)
            n_out, finish, stop_reason = max_tokens, "length", None
        choice.update(text=None if self.null_text else answer, finish_reason=finish, stop_reason=stop_reason)
        if want_logprobs:
            tokens = [self._token(i) for i in encoding.ids[:n_out]]
            choice["logprobs"] = self._logprobs([], [start for start, _ in encoding.offsets[:n_out]], tokens)
        return choice, len(ids), n_out

    def complete(self, body: dict) -> tuple[int, dict]:
        """Answer a ``/v1/completions`` body: (HTTP status, response body)."""
        model = body.get("model")
        if self._unknown(model):
            return 404, error_body(f"The model `{model}` does not exist.", "NotFoundError", 404)
        choices, used_in, used_out = [], 0, 0
        try:
            prompts = self._prompts(body.get("prompt"))
            if self.reject_token_ids and any(not isinstance(p, str) for p in prompts):
                raise BadRequest("prompt must be a string or a list of strings")
            if self.one_prompt_per_request and len(prompts) > 1:
                raise BadRequest("only one prompt per request is supported")
            if self.ignore_echo:
                body = {**body, "echo": False}
            for i, prompt in enumerate(prompts):
                choice, n_in, n_out = self._choice(i, prompt, body)
                choices.append(choice)
                used_in += n_in
                used_out += n_out
        except BadRequest as err:
            return 400, error_body(str(err), "BadRequestError", 400)
        with self._lock:
            self.prompts_seen += len(prompts)
        return 200, {"id": f"cmpl-{_random_hex()}", "object": "text_completion", "created": int(time.time()),
                     "model": model or self.model_name, "choices": choices,
                     "usage": {"prompt_tokens": used_in, "total_tokens": used_in + used_out,
                               "completion_tokens": used_out, "prompt_tokens_details": None}}

    # -- /v1/chat/completions ----------------------------------------------------------------------------------

    def chat(self, body: dict) -> tuple[int, dict]:
        """Answer a chat body as vLLM does: the messages' contents, joined by newlines, stand for the templated
        prompt; the answer is the generation rule's text (no log-probabilities). Without a chat template, vLLM's
        HTTP 400."""
        model = body.get("model")
        if self._unknown(model):
            return 404, error_body(f"The model `{model}` does not exist.", "NotFoundError", 404)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            return 400, error_body("messages must be a non-empty list of {role, content}", "BadRequestError", 400)
        if not self.chat_template:
            return 400, error_body(CHAT_TEMPLATE_MISSING, "BadRequestError", 400)
        prompt = "\n".join(m["content"] for m in messages)
        try:
            choice, n_in, n_out = self._choice(0, prompt, {**body, "echo": False, "logprobs": None})
        except BadRequest as err:
            return 400, error_body(str(err), "BadRequestError", 400)
        with self._lock:
            self.prompts_seen += 1
        message = {"role": "assistant", "content": choice["text"]}
        return 200, {"id": f"chatcmpl-{_random_hex()}", "object": "chat.completion", "created": int(time.time()),
                     "model": model or self.model_name,
                     "choices": [{"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": choice["finish_reason"], "stop_reason": choice["stop_reason"]}],
                     "usage": {"prompt_tokens": n_in, "total_tokens": n_in + n_out, "completion_tokens": n_out}}

    # -- other endpoints ---------------------------------------------------------------------------------------
