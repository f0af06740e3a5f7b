"""lm-eval model ``evalchemy-echo-completions``: ``local-completions`` reading each echo with ``echo.prompt_entries``.

Imported by the worker (it needs lm-eval), which registers the model in lm-eval's registry. Requests are the same as
``local-completions``'s; only the reading of log-likelihood answers differs: the answer's log-probabilities are the
prompt's own entries ``[ctxlen:len(prompt)]``, whether or not the server echoed a generated token after them, so an
answer the model would end with end-of-text keeps its last token (llama.cpp's server). For an echo that ends with the
generated token (vLLM's) this is lm-eval's ``[ctxlen:-1]``.
"""

from __future__ import annotations

from operator import itemgetter

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI

from evalchemy.backends.echo_check import ECHO_MODEL, prompt_entries


@register_model(ECHO_MODEL)
class EchoCheckedCompletionsAPI(LocalCompletionsAPI):
    @staticmethod
    def parse_logprobs(outputs: dict | list[dict], tokens: list[list[int]] | None = None,
                       ctxlens: list[int] | None = None, **kwargs) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether every one was the greedy choice) per prompt."""
        res = []
        choices = [c for out in (outputs if isinstance(outputs, list) else [outputs])
                   for c in sorted(out["choices"], key=itemgetter("index"))]
        for choice, prompt, ctxlen in zip(choices, tokens, ctxlens, strict=True):
            assert ctxlen > 0, "Context length must be greater than 0"
            token_logprobs, top_logprobs = prompt_entries(choice, len(prompt))
            continuation, top = token_logprobs[ctxlen:], top_logprobs[ctxlen:]
            is_greedy = all(lp == max(t.values()) for lp, t in zip(continuation, top, strict=False))
            res.append((sum(continuation), is_greedy))
        return res
