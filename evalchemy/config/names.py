"""Which names are safe where: a benchmark's name names files, so any script's letters are fine there."""

from __future__ import annotations

import unicodedata

BENCHMARK_NAME_BYTES = 128


def benchmark_name_problem(name: str) -> str | None:
    """Benchmark names name files (``<name>_results.json``, ``lm_eval/<name>/``) and are never shell words or
    lm-eval task names: letters and digits of any script are safe there, and so are '.', '_' and '-'."""
    def letter_or_digit(ch: str) -> bool:
        return unicodedata.category(ch)[0] == "L" or unicodedata.category(ch) == "Nd"

    if (name and letter_or_digit(name[0])
            and all(letter_or_digit(ch) or unicodedata.category(ch)[0] == "M" or ch in "._-" for ch in name)
            and len(name.encode("utf-8")) <= BENCHMARK_NAME_BYTES):
        return None
    return (f"{name!r} is not a valid benchmark name: use letters and digits (any script), '.', '_' and '-', "
            f"starting with a letter or digit, at most {BENCHMARK_NAME_BYTES} bytes in UTF-8 (it names the "
            "benchmark's files)")
