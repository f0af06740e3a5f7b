"""lm-eval renders a task's Jinja templates (doc_to_text, doc_to_target, doc_to_choice, ...) by compiling the
template text again for every document: ``Environment.from_string`` parses and compiles it each time. For a task of
50,000 documents that was most of the worker's time before the first request and after the last answer (10,000
documents: 24.7 s of 32 s in a profile). ``install()`` makes lm-eval compile each template text once, in lm-eval's
own Jinja environment, so every rendered string is the one lm-eval renders."""

from __future__ import annotations

import functools

TEMPLATES_KEPT = 4096  # distinct template texts kept compiled (a task has a handful)


def install() -> None:
    """Replace ``lm_eval.utils.apply_template`` (which every caller reads from the module) with a compiling-once one."""
    from lm_eval import utils

    if getattr(utils.apply_template, "evalchemy_cached", False):
        return
    compiled = functools.lru_cache(maxsize=TEMPLATES_KEPT)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compiled(template).render(**doc)

    apply_template.evalchemy_cached = True
    apply_template.compiled = compiled
    utils.apply_template = apply_template
