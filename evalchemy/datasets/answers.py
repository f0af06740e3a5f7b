"""Reading the answer letter out of a generative KMMLU reply (the HRET style: the model reasons, then ends with
"따라서, 정답은: (X)").

Tolerant in the ways models are: full-width or lower-case letters, with or without the parentheses or the colon,
"정답: B", "The answer is (C)". The first stated answer counts (a completion model may go on to write the next
question and answer it too). A reply that states no answer but starts with a letter ("B", "(B)", "B. 사과") counts
that letter; anything else is "[invalid]", which matches no target.
"""

from __future__ import annotations

import re
import unicodedata

INVALID = "[invalid]"
_STATED = re.compile(r"(?:정답\s*(?:은|는)?|answer\s+is|answer)\s*[:：]?\s*[(\[]?\s*([A-Da-d])\s*[)\]]?(?![A-Za-z])",
                     re.IGNORECASE)
_LEADING = re.compile(r"^[(\[]?\s*([A-Da-d])\s*(?:[)\].:]|\s|$)")


def answer_letter(reply: str | None) -> str:
    """The letter A-D the reply answers, or ``INVALID``."""
    if not isinstance(reply, str):
        return INVALID
    text = unicodedata.normalize("NFKC", reply).strip()
    stated = _STATED.search(text)
    if stated:
        return stated.group(1).upper()
    leading = _LEADING.match(text)
    return leading.group(1).upper() if leading else INVALID


def answer_letters(resps, docs) -> list[list[str]]:
    """lm-eval's ``custom`` filter: every reply of every document reduced to its answer letter."""
    return [[answer_letter(reply) for reply in replies] for replies in resps]
