"""Task YAMLs are read by one YAML parser: the task index's groups, tags and tasks are what lm-eval itself reads."""

from __future__ import annotations

import json
from pathlib import Path

from evalchemy.engines.lm_eval import taskyaml

from evalchemy.datasets import availability as data
from evalchemy.engines.lm_eval.taskindex import builtin_index, scan_folder


def test_lm_eval_groups_have_the_members_lm_eval_gives_them():
    """agieval_en keeps the member with a trailing comment; mmlusr_answer_only and lm_syneval list task names, not
    the keys of their inline sub-groups ("group: …", "metric: acc")."""
    index = builtin_index()
    assert index.groups["agieval_en"]["members"] == [
        "agieval_aqua_rat", "agieval_gaokao_english", "agieval_logiqa_en", "agieval_lsat_ar", "agieval_lsat_lr",
        "agieval_lsat_rc", "agieval_math", "agieval_sat_en_without_passage", "agieval_sat_en", "agieval_sat_math",
    ]
    assert "agieval_gaokao_english" in index.leaf_tasks("agieval_en")
    assert index.groups["mmlusr_answer_only"]["members"] == [
        "mmlusr_answer_only_stem_tasks", "mmlusr_answer_only_other_tasks",
        "mmlusr_answer_only_social_sciences_tasks", "mmlusr_answer_only_humanities_tasks",
    ]
    assert all(index.knows(member) for member in index.groups["mmlusr_answer_only"]["members"])
    syneval = index.groups["lm_syneval"]["members"]
    assert len(syneval) == 72
    assert syneval[0] == "lm_syneval__reflexives__simple_reflexives__sing_MS_ANPHR"
    assert [m for m in syneval if m not in index.tasks] == []
    assert index.leaf_tasks("lm_syneval") == syneval


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_scanner_reads_yaml_not_lines(tmp_path):
    """A trailing comment on a list item, keys nested in an inline sub-group, a quoted name, an include and a
    !function tag are read as YAML; a file with two documents is skipped, as lm-eval skips it."""
    _write(tmp_path, "_template.yaml", "output_type: multiple_choice\ntag: [t_tag]\n"
                                       "process_docs: !function utils.process_docs\n")
    _write(tmp_path, "a.yaml", "task: t_a\ninclude: _template.yaml\n")
    _write(tmp_path, "b.yaml", "task: 't_b'  # quoted, commented\noutput_type: generate_until\n")
    _write(tmp_path, "group.yaml", (
        "group: g\n"
        "task:\n"
        "  - t_a # a trailing comment\n"
        "  - group: g_inner\n"
        "    task:\n"
        "      - t_b\n"
        "    aggregate_metric_list:\n"
        "      - metric: acc\n"
        "  - task: t_b\n"
        "    num_fewshot: 1\n"
        "aggregate_metric_list:\n"
        "  - metric: acc\n"
    ))
    _write(tmp_path, "two_docs.yaml", "task: t_first\n---\ntask: t_second\n")
    index = scan_folder(tmp_path)
    assert index.groups == {"g": {"dir": str(tmp_path), "members": ["t_a", "t_b"]}}
    assert index.tasks == {
        "t_a": {"dir": str(tmp_path), "file": "a.yaml", "output_type": "multiple_choice"},
        "t_b": {"dir": str(tmp_path), "file": "b.yaml", "output_type": "generate_until"},
    }
    assert index.tags == {"t_tag": ["t_a"]}
    assert index.needs_loglikelihood("g") is True
    assert index.needs_loglikelihood("t_b") is False


def test_data_preflight_reads_the_same_yaml(tmp_path):
    """The data preflight's dataset fields come from the same reader: include followed, own keys win, tags
    ignored."""
    _write(tmp_path, "_base.yaml", "dataset_path: org/base\ndataset_name: all\n"
                                   "doc_to_text: !function utils.doc_to_text\n")
    _write(tmp_path, "task.yaml", "include: _base.yaml\ntask: t\ndataset_name: sub # the subset\n")
    assert data.task_dataset(tmp_path / "task.yaml") == {
        "dataset_path": "org/base", "dataset_name": "sub", "dataset_kwargs": None}
    assert taskyaml.read_config(tmp_path / "task.yaml")["doc_to_text"] is None


def test_include_cycle_stops(tmp_path):
    """Two files that include each other are read once each, not forever."""
    _write(tmp_path, "x.yaml", "include: y.yaml\ntask: t_x\n")
    _write(tmp_path, "y.yaml", "include: x.yaml\noutput_type: loglikelihood\n")
    assert taskyaml.read_config(tmp_path / "x.yaml") == {"task": "t_x", "output_type": "loglikelihood"}


def test_task_index_cache_is_one_file_per_format_and_another_format_is_never_read(tmp_path, monkeypatch):
    """The cache file's name carries the index format: a file of another format (an older evalchemy beside this one)
    is neither read nor overwritten."""
    from evalchemy.engines.lm_eval import taskindex

    monkeypatch.setenv("EVALCHEMY_CACHE_DIR", str(tmp_path))
    version = taskindex.lm_eval_version()
    stamp = {"format": taskindex.INDEX_FORMAT - 1, "version": version, "tasks_dir": str(taskindex.lm_eval_tasks_dir())}
    old = {"stamp": stamp, "tasks": {"only_old_task": None}, "groups": {}, "tags": {}}
    old_file = tmp_path / f"task_index_v{taskindex.INDEX_FORMAT - 1}_lm_eval_{version}.json"
    old_file.write_text(json.dumps(old), encoding="utf-8")
    index = taskindex.builtin_index()
    assert index.knows("hellaswag") and not index.knows("only_old_task")
    assert json.loads(old_file.read_text(encoding="utf-8")) == old
    assert sorted(p.name for p in tmp_path.glob("task_index_*")) == sorted(
        [old_file.name, f"task_index_v{taskindex.INDEX_FORMAT}_lm_eval_{version}.json"])


def test_index_reads_keep_only_the_keys_asked_for(tmp_path):
    """The index build keeps a few keys of each file (lm-eval's ~13,000 task files' prompts are not held); the keys
    come through includes as lm-eval merges them, and a full read still has every key."""
    _write(tmp_path, "_base.yaml", "output_type: multiple_choice\ndoc_to_text: 'a long prompt {{question}}'\n"
                                   "tag: [base_tag]\n")
    _write(tmp_path, "task.yaml", "include: _base.yaml\ntask: demo\ndoc_to_choice: [A, B]\ntag: own_tag\n")
    cache: dict = {}
    slim = taskyaml.read_config(tmp_path / "task.yaml", cache, keys=("task", "output_type", "tag"))
    assert slim == {"task": "demo", "output_type": "multiple_choice", "tag": "own_tag"}
    assert all(set(kept) <= {"task", "output_type", "tag", "include"} for kept in cache.values()) and len(cache) == 2
    assert taskyaml.read_config(tmp_path / "task.yaml") == {
        "output_type": "multiple_choice", "doc_to_text": "a long prompt {{question}}", "tag": "own_tag",
        "task": "demo", "doc_to_choice": ["A", "B"]}
