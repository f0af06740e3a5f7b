"""What the test server answers: the deterministic model (``Answers``, see evalchemy/testing/server.py's docstring)
and vLLM's error bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable

import orjson


@dataclass
class Answers:
    """The deterministic model: see the module docstring."""

    favoured: set[str] = field(default_factory=set)
    favoured_logprob: float = -0.1
    default_logprob: float = -2.0
    generations: list[dict] = field(default_factory=list)
    default_generation: str = "I do not know"

    @classmethod
    def from_dict(cls, data: dict | None) -> "Answers":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"answers: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        for rule in data.get("generations", []):
            if not (isinstance(rule, dict) and isinstance(rule.get("contains"), str)
                    and isinstance(rule.get("text"), str)):
                raise ValueError(f"answers.generations: {rule!r} is not {{'contains': str, 'text': str}}")
        data["favoured"] = set(data.get("favoured", ()))
        return cls(**data)

    def logprob(self, token: str) -> float:
        return self.favoured_logprob if token in self.favoured else self.default_logprob

    def top_logprobs(self, token: str, logprob: float) -> dict[str, float]:
        """The chosen token, plus a favoured word when that one is likelier (then the choice was not greedy)."""
        top = {token: logprob}
        if self.favoured and logprob < self.favoured_logprob:
            top[min(self.favoured)] = self.favoured_logprob
        return top

    def echoed_json(self, tokens: list[str]) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Prompt tokens' entries as serialised JSON, one list each: the token, its log-probability, its top_logprobs
        (the test server builds them once for its whole vocabulary, then joins bytes for a long echo)."""
        logprobs = [self.logprob(token) for token in tokens]
        return ([orjson.dumps(token) for token in tokens], [orjson.dumps(lp) for lp in logprobs],
                [orjson.dumps(self.top_logprobs(token, lp)) for token, lp in zip(tokens, logprobs)])

    def generate(self, prompt: str, words: Callable[[str], str] = lambda s: s) -> str:
        """The first rule whose ``contains`` is in ``prompt`` (as is, or word by word through ``words``)."""
        prompt_words = None
        for rule in self.generations:
            if rule["contains"] in prompt:
                return rule["text"]
            prompt_words = words(prompt) if prompt_words is None else prompt_words
            if words(rule["contains"]) in prompt_words:
                return rule["text"]
        return self.default_generation


def error_body(message: str, kind: str, code: int) -> dict:
    """vLLM's error body."""
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def error_type(code: int) -> str:
    known = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 429: "RateLimitError",
             500: "InternalServerError", 503: "ServiceUnavailableError"}
    if code in known:
        return known[code]
    try:
        return HTTPStatus(code).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "Error"


class BadRequest(ValueError):
    pass
