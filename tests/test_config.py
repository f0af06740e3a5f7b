"""--validate-config: every problem reported at once, one line each, with its location; exit code 2."""

from __future__ import annotations

import json


VALID = {
    "benchmarks": {
        "arc_easy": {"enabled": True, "description": "ARC easy", "tasks": ["arc_easy"]},
        "mmlu": {"enabled": False, "description": "MMLU", "tasks": ["mmlu"]},
    },
    "tasks": {
        "arc_easy": {"enabled": True, "tasks": ["arc_easy"], "num_fewshot": 25, "batch_size": 1, "limit": 1,
                     "description": "AI2 Reasoning Challenge (Easy)", "metrics": ["acc"],
                     "output_path": "raw/arc_easy", "log_samples": True, "priority": "high", "timeout": 1800},
    },
}


def test_valid_config_passes(invoke, write_config):
    """A config using every documented field validates, exit 0, with a one-line report on stdout."""
    path = write_config(VALID)
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{path}: valid (2 benchmarks, 1 enabled, 1 lm-eval runs)\n"


def test_shipped_default_config_is_valid(invoke):
    """configs/eval_config.json, shipped with the guide's example benchmarks, validates."""
    from tests.conftest import PROJECT

    result = invoke("--validate-config", "--config", str(PROJECT / "configs" / "eval_config.json"))
    assert result.exit_code == 0, result.stderr
    assert "valid (6 benchmarks, 3 enabled, 3 lm-eval runs)" in result.stdout


def test_trailing_commas_and_comments_are_each_located(invoke, write_config):
    """The two mistakes copied from the guide's examples are reported with line, column and a fix."""
    path = write_config('{\n  "benchmarks": {\n    "a": {\n      "enabled": true,  // on\n'
                        '      "tasks": ["arc_easy"],\n    },\n  }\n}\n')
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: 3 problems found\n"
        "  line 4, column 25: JSON does not allow comments: delete the `//` comment\n"
        "  line 5, column 28: trailing comma before the end of an object: delete this comma\n"
        "  line 6, column 6: trailing comma before the end of an object: delete this comma\n"
        "(exit code 2: config error; nothing was run)\n"
    )


def test_other_syntax_error_has_line_and_column(invoke, write_config):
    """A JSON error with no known cause still names its line and column."""
    path = write_config('{"benchmarks": {"a": {"enabled": true "tasks": []}}}')
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 2
    assert "  line 1, column 39: invalid JSON: Expecting ',' delimiter\n" in result.stderr


def test_every_schema_and_name_problem_is_listed(invoke, write_config):
    """Wrong types, bad ranges, unknown keys, bad names and unknown tasks: all reported, sorted by location."""
    path = write_config({
        "benchmarks": {
            "arc": {"enabled": "yes", "tasks": ["arc_eazy", "-x", "hellaswag"], "descripton": "typo"},
        },
        "tasks": {
            "hellaswag": {"enabled": True, "num_fewshot": -1, "limit": 0, "timeout": 0, "batch_size": 0,
                          "priority": "urgent", "output_path": "../../etc"},
            "mmlu": {"enabled": True, "tasks": ["mmlu_nonexistent_subject"]},
        },
    })
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {path}: 11 problems found"
    assert lines[1:-1] == [
        "  benchmarks.arc: unknown key 'descripton' (did you mean 'description'?); "
        "allowed keys: description, enabled, tasks",
        "  benchmarks.arc.enabled: 'yes' is not of type 'boolean'",
        "  benchmarks.arc.tasks[0]: 'arc_eazy' is not a task in this config's tasks section nor an lm-eval task "
        "(did you mean 'arc_easy'?)",
        "  benchmarks.arc.tasks[1]: '-x' is not a valid lm-eval task name: use letters, digits, '.', '_' and '-' "
        "(no commas, spaces or leading '-')",
        "  tasks.hellaswag.batch_size: 0 is less than the minimum of 1",
        "  tasks.hellaswag.limit: 0 is less than the minimum of 1",
        "  tasks.hellaswag.num_fewshot: -1 is less than the minimum of 0",
        "  tasks.hellaswag.output_path: '../../etc' must stay inside the run's results folder: remove '..'",
        "  tasks.hellaswag.priority: 'urgent' is not one of high, medium, low",
        "  tasks.hellaswag.timeout: 0 is less than the minimum of 1",
        "  tasks.mmlu.tasks[0]: 'mmlu_nonexistent_subject' is not an lm-eval task",
    ]


def test_absolute_output_path_is_refused(invoke, write_config):
    """output_path cannot point outside the run's results folder."""
    config = json.loads(json.dumps(VALID))
    config["tasks"]["arc_easy"]["output_path"] = "/etc/evil"
    result = invoke("--validate-config", "--config", str(write_config(config)))
    assert result.exit_code == 2
    assert ("  tasks.arc_easy.output_path: '/etc/evil' must be a path relative to the run's results folder, "
            "not an absolute path\n") in result.stderr


def test_missing_config_file(invoke, tmp_path):
    """A missing config names the file and the flag to fix it."""
    result = invoke("--validate-config", "--config", str(tmp_path / "nope.json"))
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'nope.json'}: 1 problem found\n" \
           "  file not found: pass --config with the path of your eval_config.json\n" in result.stderr


def test_invalid_config_writes_nothing(invoke, write_config, tmp_path):
    """A run with an invalid config exits 2 and creates nothing under the output folder."""
    path = write_config('{"benchmarks": {}, "extra": 1}')
    out = tmp_path / "out"
    result = invoke("--endpoint", "http://127.0.0.1:9/v1", "--config", str(path), "--output", str(out),
                    "--run-id", "r1")
    assert result.exit_code == 2
    assert "(top level): unknown key 'extra'; allowed keys: $schema, benchmarks, model, tasks" in result.stderr
    assert not out.exists()


def test_unreferenced_and_all_disabled_warnings(invoke, write_config):
    """Entries no benchmark lists, and benchmarks whose tasks are all disabled, are warned about (exit 0)."""
    path = write_config({
        "benchmarks": {"b": {"enabled": True, "tasks": ["arc_easy"]}},
        "tasks": {"arc_easy": {"enabled": False}, "hellaswag": {"enabled": True}},
    })
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: benchmarks.b: enabled, but every task it lists is disabled; it will be skipped\n"
        "warning: tasks.hellaswag: not listed by any benchmark, so it never runs\n"
    )


def test_unknown_kmmlu_subject_lists_the_real_ones(invoke, write_config):
    """KMMLU has no Insurance subject: the message lists the subjects lm-eval has."""
    from evalchemy.engines.lm_eval.taskindex import builtin_index

    subjects = sorted(t.removeprefix("kmmlu_") for t in builtin_index().leaf_tasks("kmmlu"))
    assert len(subjects) == 45 and "accounting" in subjects and "insurance" not in subjects
    path = write_config({"benchmarks": {"kmmlu_domain": {"enabled": True, "tasks": ["kmmlu_insurance"]}}})
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 2
    line = result.stderr.splitlines()[1]
    assert line.startswith("  benchmarks.kmmlu_domain.tasks[0]: 'kmmlu_insurance' is not a task in this config's "
                           "tasks section nor an lm-eval task")
    assert line.endswith("; KMMLU has 45 subjects, none named 'insurance' (domain sets such as insurance are your "
                         f"own data in the KMMLU format): {', '.join(subjects)}; for your own data add a tasks entry "
                         'with a dataset block, e.g. "kmmlu_insurance": {"enabled": true, "dataset": {"path": '
                         '"kmmlu/insurance"}}')


def test_kmmlu_subject_names_match_lm_eval():
    """The subjects --validate-config accepts for HAERAE-HUB/KMMLU are the dataset_name values of lm-eval's own
    kmmlu tasks."""
    import re

    from evalchemy.config.model import KMMLU_SUBJECTS
    from evalchemy.engines.lm_eval.taskindex import lm_eval_tasks_dir

    names = set()
    for path in (lm_eval_tasks_dir() / "kmmlu" / "default").glob("kmmlu_*.yaml"):
        match = re.search(r"^dataset_name: (\S+)$", path.read_text(encoding="utf-8"), re.M)
        if match:
            names.add(match.group(1))
    assert sorted(names) == list(KMMLU_SUBJECTS)
