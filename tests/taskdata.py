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


# --- local datasets in the KMMLU format, in every format the data folder accepts ---------------------------------

# Subject -> (Korean label, answers 1-4 of its test questions). The test server's model always picks "A", so a
# subject's accuracy is the share of answer 1: insurance 3/5, finance 1/4, accounting 3/4, economics 3/6.
DOMAINS = {
    "insurance": ("보험학", [1, 1, 2, 1, 3]),
    "finance": ("금융", [1, 2, 2, 4]),
    "accounting": ("회계", [1, 1, 1, 2]),
    "economics": ("경제학", [2, 3, 1, 4, 1, 1]),
}
DEV_ANSWERS = [2, 4, 1, 3, 1]  # five, as KMMLU's dev split has per subject


def kmmlu_rows(subject: str, split: str = "test", answers: list | None = None) -> list[dict]:
    """KMMLU-format rows (question, A-D, answer 1-4, Category, Human Accuracy) with Korean text."""
    label, test_answers = DOMAINS[subject]
    chosen = answers if answers is not None else test_answers if split == "test" else DEV_ANSWERS
    return [{"question": f"{label} {split} 문제 {i} 의 정답 은 무엇 인가 ?", "A": f"{label} 보기 가",
             "B": f"{label} 보기 나", "C": f"{label} 보기 다", "D": f"{label} 보기 라", "answer": answer,
             "Category": label, "Human Accuracy": 0.5} for i, answer in enumerate(chosen, 1)]


def expected_accuracy(subject: str) -> float:
    answers = DOMAINS[subject][1]
    return sum(1 for a in answers if a == 1) / len(answers)


def write_save_to_disk(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """``datasets.DatasetDict(...).save_to_disk(folder)``, as on the connected machine in the user's guide."""
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(folder))
    return folder


def write_rows(path: Path, rows: list[dict]) -> Path:
    """One data file, its format from the suffix: .jsonl, .json (array), .csv, .parquet, .arrow."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        _write_jsonl(path, rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix in (".parquet", ".arrow"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        if path.suffix == ".parquet":
            pq.write_table(table, path)
        else:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    else:
        raise ValueError(path)
    return path


def write_hub_mirror(folder: Path, subjects: dict[str, str]) -> Path:
    """A local mirror of a hub dataset repo laid out like HAERAE-HUB/KMMLU: README.md with ``configs`` and
    ``data/<Subset>-<split>.csv``. ``subjects`` maps subset name -> DOMAINS key."""
    card = ["---", "configs:"]
    for subset, subject in subjects.items():
        card += [f"- config_name: {subset}", "  data_files:"]
        for split in ("dev", "test"):
            write_rows(folder / "data" / f"{subset}-{split}.csv", kmmlu_rows(subject, split))
            card += [f"  - split: {split}", f"    path: data/{subset}-{split}.csv"]
    (folder / "README.md").write_text("\n".join(card + ["---", "", "# Local mirror (test data)", ""]),
                                      encoding="utf-8")
    return folder


def domain_vocabulary() -> list[str]:
    texts = []
    for subject in DOMAINS:
        for split in ("test", "dev"):
            for row in kmmlu_rows(subject, split):
                texts += [row["question"], row["A"], row["B"], row["C"], row["D"]]
    return texts
