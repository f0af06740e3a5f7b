"""Small task folders the tests write themselves: datasets (English and Korean, KMMLU format), task YAMLs, and the
words a test tokenizer needs. Nothing here comes from a real dataset."""

from __future__ import annotations

import json
from pathlib import Path

# English multiple choice: the server favours some words; a test predicts the model's pick from that rule.
CAPITALS = [
    ("Which city is the capital of France?", ["Paris", "Rome", "Berlin", "Madrid"], 0),
    ("Which city is the capital of Italy?", ["Paris", "Rome", "Berlin", "Madrid"], 1),
    ("Which city is the capital of Germany?", ["Oslo", "Rome", "Berlin", "Madrid"], 2),
    ("Which city is the capital of Spain?", ["Paris", "Lisbon", "Berlin", "Madrid"], 3),
    ("Which city is the capital of Norway?", ["Oslo", "Rome", "Berlin", "Vienna"], 0),
    ("Which city is the capital of Austria?", ["Paris", "Vienna", "Oslo", "Madrid"], 1),
]

# Korean questions in the KMMLU format (question, A-D, answer 1-4, Category), two domain subjects.
KOREAN = {
    "insurance": ("보험학", [
        ("보험료 를 결정하는 주요 요소 는 무엇 인가 ?", ["위험률", "금리", "환율", "주가"], 1),
        ("재보험 의 목적 은 무엇 인가 ?", ["위험 분산", "이익 증대", "세금 감면", "광고"], 1),
        ("생명보험 에서 피보험자 는 누구 인가 ?", ["계약자", "보험 대상자", "수익자", "설계사"], 2),
        ("손해보험 의 기본 원칙 은 ?", ["실손 보상", "정액 지급", "무상 지급", "선지급"], 1),
    ]),
    "finance": ("금융", [
        ("기준금리 를 결정하는 기관 은 ?", ["중앙은행", "증권사", "보험사", "국세청"], 1),
        ("채권 가격 과 금리 의 관계 는 ?", ["비례", "반비례", "무관", "동일"], 2),
        ("주식 의 배당 은 무엇 인가 ?", ["이익 분배", "원금 상환", "이자", "수수료"], 1),
        ("예금자 보호 한도 는 누가 정하는가 ?", ["은행", "고객", "예금보험공사", "증권사"], 3),
        ("분산 투자 의 목적 은 ?", ["위험 감소", "수익 극대화", "세금 회피", "거래 증가"], 4),
    ]),
}

# Generation: the server answers by rule (prompt contains X -> text); exact match against "target".
ECHO_WORDS = [("apple", "apple"), ("river", "river"), ("cloud", "stone"), ("green", "green")]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_tasks(folder: Path) -> dict:
    """Write datasets and task YAMLs under ``folder``; returns what tests need to predict scores."""
    data = folder / "data"
    tasks = folder / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)

    _write_jsonl(data / "capitals.jsonl", [{"question": q, "choices": c, "answer": a} for q, c, a in CAPITALS])
    (tasks / "capitals.yaml").write_text(
        "task: demo_capitals\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data / 'capitals.jsonl'}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1\n",
        encoding="utf-8",
    )
    for name, (category, rows) in KOREAN.items():
        _write_jsonl(data / f"kmmlu_{name}.jsonl", [
            {"question": q, "A": c[0], "B": c[1], "C": c[2], "D": c[3], "answer": a, "Category": category}
            for q, c, a in rows
        ])
        (tasks / f"kmmlu_{name}.yaml").write_text(
            f"task: demo_kmmlu_{name}\n"
            "dataset_path: json\n"
            "dataset_kwargs:\n"
            "  data_files:\n"
            f"    test: {data / f'kmmlu_{name}.jsonl'}\n"
            "output_type: multiple_choice\n"
            "test_split: test\n"
            'doc_to_text: "{{question}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n정답 :"\n'
            'doc_to_choice: ["A", "B", "C", "D"]\n'
            'doc_to_target: "{{answer - 1}}"\n'
            "metric_list:\n"
            "  - metric: acc\n"
            "    aggregation: mean\n"
            "    higher_is_better: true\n"
            "metadata:\n"
            "  version: 1\n",
            encoding="utf-8",
        )
    (tasks / "kmmlu_group.yaml").write_text(
        "group: demo_kmmlu_group\n"
        "task:\n"
        "  - demo_kmmlu_insurance\n"
        "  - demo_kmmlu_finance\n"
        "aggregate_metric_list:\n"
        "  - metric: acc\n"
        "    weight_by_size: true\n"
        "metadata:\n"
        "  version: 1\n",
        encoding="utf-8",
    )
    _write_jsonl(data / "echo.jsonl", [{"question": f"Repeat the word {w} please", "target": t}
                                       for w, t in ECHO_WORDS])
    (tasks / "echo.yaml").write_text(
        "task: demo_echo\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data / 'echo.jsonl'}\n"
        "output_type: generate_until\n"
        "test_split: test\n"
        'doc_to_text: "{{question}}\\nAnswer:"\n'
        'doc_to_target: "{{target}}"\n'
        "generation_kwargs:\n"
        "  until: [\"\\n\"]\n"
        "  max_gen_toks: 8\n"
        "filter_list:\n"
        "  - name: strip\n"
        "    filter:\n"
        "      - function: remove_whitespace\n"
        "      - function: take_first\n"
        "metric_list:\n"
        "  - metric: exact_match\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1\n",
        encoding="utf-8",
    )
    return {"tasks_dir": tasks, "data_dir": data}


def vocabulary() -> list[str]:
    """Every text a test tokenizer must cover (prompts, choices, answers)."""
    texts = ["Question :", "Answer :", "정답 :", "A B C D .", "Repeat the word please", "I do not know"]
    for q, choices, _ in CAPITALS:
        texts += [q, *choices]
    for _, (category, rows) in KOREAN.items():
        texts.append(category)
        for q, choices, _ in rows:
            texts += [q, *choices]
    for word, target in ECHO_WORDS:
        texts += [word, target]
    return texts
