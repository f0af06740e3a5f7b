"""The embedded model's server process: llama-cpp-python's OpenAI-compatible server (``llama_cpp.server``, its own
arguments), with its top log-probabilities chosen without sorting the whole vocabulary.

For every position of an echoed prompt llama-cpp-python sorts all 49,152 (log-probability, token) pairs of the
vocabulary in Python to keep the first ``logprobs`` of them (36 ms a position on this project's build machine), while
lm-eval asks for one. Here that sort returns the same first entries, in the same order, from a partial selection
(``np.argpartition``): the answers are identical, up to ``MAX_TOP_LOGPROBS`` top entries a position (OpenAI's
completions API allows 5).

``python -m evalchemy.backends.llamacpp_serve --model FILE ...`` (``LocalServer`` starts it).
"""

from __future__ import annotations

import builtins
import runpy
import sys

MAX_TOP_LOGPROBS = 1000


def _arrays(iterable):
    """(values, n) when ``iterable`` is ``zip(ndarray, range(len(ndarray)))`` not yet iterated, else None."""
    import numpy as np

    if type(iterable) is not zip:
        return None
    parts = iterable.__reduce__()[1]
    if len(parts) != 2 or type(parts[0]).__name__ != "iterator" or type(parts[1]).__name__ != "range_iterator":
        return None
    values_state, range_state = parts[0].__reduce__(), parts[1].__reduce__()
    values, numbers = values_state[1][0], range_state[1][0]
    fresh = values_state[2:] in ((), (0,)) and range_state[2] == 0
    if fresh and isinstance(values, np.ndarray) and values.ndim == 1 and numbers == range(len(values)):
        return values
    return None


def top_sorted(iterable, /, *, key=None, reverse=False):
    """``sorted`` for llama-cpp-python's module: ``sorted(zip(logprobs, range(n)), reverse=True)`` gives its first
    MAX_TOP_LOGPROBS entries (every entry tied with the last of them included), exactly as the full sort orders them;
    any other call is the built-in sort."""
    import numpy as np

    values = _arrays(iterable) if key is None and reverse else None
    if values is None or len(values) <= MAX_TOP_LOGPROBS:
        return builtins.sorted(iterable, key=key, reverse=reverse)
    threshold = np.partition(values, len(values) - MAX_TOP_LOGPROBS)[len(values) - MAX_TOP_LOGPROBS]
    chosen = np.flatnonzero(values >= threshold)
    return builtins.sorted(((values[i], int(i)) for i in chosen), reverse=True)


def main() -> None:
    import llama_cpp.llama

    llama_cpp.llama.sorted = top_sorted  # the module's own name: only its log-probability loops use ``sorted``
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
