"""A run with rigged answers for the stats layer and the reports: multiple choice whose choices the test server scores
with known log-likelihoods (so each question's confidence is known), Korean subjects, and a generation task whose
answers the server picks so that some cannot be parsed. Also the independent arithmetic the tests check against."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

from evalchemy.testing.server import build_test_tokenizer
from tests import taskdata
from tests.conftest import PROJECT

FAVOURED = {"Paris", "Berlin", "Oslo", "A", "C"}
FAVOURED_LOGPROB, DEFAULT_LOGPROB = -0.1, -2.0

# (question, choices, answer index): every word of a choice is one token scored by FAVOURED.
SURE = [
    ("Pick the first city", ["Paris", "Rome", "Madrid", "Lisbon"], 0),
    ("Pick the second city", ["Paris Berlin", "Rome", "Madrid", "Vienna"], 1),
    ("Pick the right city", ["Paris", "Berlin", "Oslo", "Rome"], 0),
    ("Pick the last city", ["Rome", "Madrid", "Lisbon", "Vienna"], 2),
    ("Pick the only city", ["Paris", "Rome Madrid Lisbon Vienna", "Vienna Rome", "Madrid Lisbon"], 0),
    ("Pick the long city" + " city" * 60, ["Oslo", "Rome", "Madrid", "Lisbon"], 1),  # a prompt of 256-511 characters
]
# Generation with a regex filter: answers without "answer is <word>" come out as "[invalid]" (no answer).
PARSE = [("apple", "apple"), ("river", "river"), ("cloud", "cloud"), ("green", "green"), ("stone", "stone")]
GENERATIONS = [{"contains": "apple", "text": " the answer is apple"},
               {"contains": "river", "text": " no idea"},
               {"contains": "cloud", "text": " answer is storm"},
               {"contains": "green", "text": " the answer is green"}]
DEFAULT_GENERATION = "I do not know"


def write_tasks(folder: Path) -> dict:
    written = taskdata.write_tasks(folder)
    tasks, data = written["tasks_dir"], written["data_dir"]
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in SURE]
    (data / "sure.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tasks / "sure.yaml").write_text(
        "task: demo_sure\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'sure.jsonl'}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1\n", encoding="utf-8")
    rows = [{"question": f"Say the word {w}", "target": t} for w, t in PARSE]
    (data / "parse.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tasks / "parse.yaml").write_text(
        "task: demo_parse\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'parse.jsonl'}\n"
        "output_type: generate_until\n"
        "test_split: test\n"
        'doc_to_text: "{{question}}\\nAnswer:"\n'
        'doc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n'
        "filter_list:\n  - name: get-answer\n    filter:\n"
        '      - function: regex\n        regex_pattern: "answer is ([a-z]+)"\n'
        "      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1\n", encoding="utf-8")
    broken = folder / "broken_tasks"
    broken.mkdir(exist_ok=True)
    (broken / "broken.yaml").write_text(
        (tasks / "capitals.yaml").read_text().replace("demo_capitals", "demo_broken")
        .replace('"Question: {{question}}', '"Question: {{question | no_such_filter}}'))
    texts = taskdata.vocabulary() + ["Pick the first second right last only city Say word", "the answer is",
                                     "no idea storm"]
    for q, choices, _ in SURE:
        texts += [q, *choices]
    for word, target in PARSE:
        texts += [word, target]
    return {**written, "broken_dir": broken, "tokenizer": build_test_tokenizer(folder / "tokenizer", texts)}


def server_answers() -> dict:
    return {"favoured": sorted(FAVOURED), "favoured_logprob": FAVOURED_LOGPROB, "default_logprob": DEFAULT_LOGPROB,
            "generations": GENERATIONS, "default_generation": DEFAULT_GENERATION}


def config() -> dict:
    return {
        "benchmarks": {
            "sure": {"enabled": True, "description": "rigged confidences", "tasks": ["sure"]},
            "kmmlu_domain": {"enabled": True, "description": "Korean domain subjects",
                             "tasks": ["kmmlu_insurance", "kmmlu_finance"]},
            "parse": {"enabled": True, "description": "generation with unparsable answers", "tasks": ["parse"]},
            "broken": {"enabled": True, "description": "a task template that does not render",
                       "tasks": ["demo_broken"]},
        },
        "tasks": {
            "sure": {"enabled": True, "tasks": ["demo_sure"], "log_samples": True},
            "kmmlu_insurance": {"enabled": True, "tasks": ["demo_kmmlu_insurance"], "label": "보험학",
                                "log_samples": True},
            "kmmlu_finance": {"enabled": True, "tasks": ["demo_kmmlu_finance"], "label": "금융", "log_samples": True},
            "parse": {"enabled": True, "tasks": ["demo_parse"], "log_samples": True},
        },
    }


def run_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def run(server, assets: dict, config: Path, output: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess:
    """The rigged run through ./run_evalchemy.sh (exit 4: the broken benchmark fails)."""
    return run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(output), "--run-id",
                   run_id, "--include-path", str(assets["tasks_dir"]), "--include-path", str(assets["broken_dir"]),
                   *extra)


# -- the arithmetic, done here independently of evalchemy.results.stats ----------------------------------------


def choice_logprobs(choices: list[str]) -> list[float]:
    return [sum(FAVOURED_LOGPROB if w in FAVOURED else DEFAULT_LOGPROB for w in c.split()) for c in choices]


def mc_outcomes(rows) -> list[tuple[float, bool]]:
    """(confidence, correct) per question: softmax of the choices' log-likelihoods, first maximum chosen."""
    out = []
    for _, choices, answer in rows:
        lls = choice_logprobs(choices)
        probs = [math.exp(v) / sum(math.exp(u) for u in lls) for v in lls]
        chosen = lls.index(max(lls))
        out.append((probs[chosen], chosen == answer))
    return out


def sure_prompt(question: str) -> str:
    """The prompt lm-eval builds from demo_sure's doc_to_text."""
    return f"Question: {question}\nAnswer:"


def korean_rows(name: str):
    return [(q, ["A", "B", "C", "D"], answer - 1) for q, _, answer in taskdata.KOREAN[name][1]]


def parse_outcomes() -> list[tuple[bool, bool]]:
    """(no answer, correct) per question."""
    import re

    out = []
    for word, target in PARSE:
        text = next((g["text"] for g in GENERATIONS if g["contains"] in word), DEFAULT_GENERATION)
        found = re.search(r"answer is ([a-z]+)", text.split("\n")[0])
        out.append((found is None, found is not None and found.group(1) == target))
    return out
