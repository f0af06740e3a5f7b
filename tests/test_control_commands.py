"""--dry-run, --list-benchmarks, flag checks and endpoint normalization: no network, no lm-eval import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evalchemy.backends.openai_completions import normalize
from evalchemy.errors import UsageError
from tests.conftest import PROJECT

GOLDEN = Path(__file__).parent / "golden"
# Regenerate the golden files with:  EVALCHEMY_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests -k golden
REGENERATE = os.environ.get("EVALCHEMY_REGENERATE_GOLDEN") == "1"

CONFIG = {
    "benchmarks": {
        "late": {"enabled": True, "description": "runs last", "tasks": ["hellaswag"]},
        "arc": {"enabled": True, "description": "ARC, two settings", "tasks": ["arc_easy", "arc_challenge"]},
        "off": {"enabled": False, "description": "disabled", "tasks": ["mmlu"]},
        "math": {"enabled": True, "description": "generation", "tasks": ["gsm8k"]},
        "gone": {"enabled": True, "description": "only disabled tasks", "tasks": ["winogrande"]},
    },
    "tasks": {
        "hellaswag": {"enabled": True, "priority": "low", "num_fewshot": 10, "limit": 5},
        "arc_easy": {"enabled": True, "tasks": ["arc_easy"], "num_fewshot": 25, "batch_size": 4, "concurrency": 4, "limit": 1,
                     "priority": "medium", "timeout": 600, "log_samples": True, "output_path": "raw/arc_easy"},
        "arc_challenge": {"enabled": True, "priority": "high", "limit": 2},
        "gsm8k": {"enabled": True, "priority": "high", "num_fewshot": 5, "limit": 3, "timeout": 900},
        "winogrande": {"enabled": False},
    },
}


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"differs from {path} (see the regeneration command above)"


def test_dry_run_commands_golden(invoke, write_config):
    """--dry-run prints, in priority order, the exact lm_eval command of every task run; exit 0, nothing written."""
    path = write_config(CONFIG)
    result = invoke("--dry-run", "--config", str(path), "--endpoint", "http://gpu-box:8000", "--model", "qwen3-8b",
                    "--tokenizer", "/models/qwen3-8b", "--output", "out", "--run-id", "nightly")
    assert result.exit_code == 0, result.stderr
    _golden("dry_run.txt", result.stdout)
    assert not Path("out").exists()


def test_dry_run_batch_size_flag_overrides_config(invoke, write_config):
    """--batch-size replaces every task's batch_size in the commands."""
    path = write_config(CONFIG)
    result = invoke("--dry-run", "--config", str(path), "--endpoint", "http://h:8000/v1", "--batch-size", "3",
                    "--run-id", "r")
    assert result.exit_code == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("lm_eval")]
    assert len(commands) == 4
    assert all(" --batch_size 3 " in c for c in commands)


def test_concurrency_per_task_and_per_run(invoke, write_config):
    """A task's concurrency reaches its own command only; --concurrency replaces every task's; the embedded model
    always gets one request at a time."""
    path = write_config(CONFIG)

    def in_flight(*flags) -> list[str]:
        result = invoke("--dry-run", "--config", str(path), "--run-id", "r", *flags)
        assert result.exit_code == 0, result.stderr
        return [re.search(r"num_concurrent=(\d+)", line).group(1) + (" arc_easy" if "--tasks arc_easy " in line else "")
                for line in result.stdout.splitlines() if line.startswith("lm_eval")]

    assert sorted(in_flight("--endpoint", "http://h:8000/v1")) == ["16", "16", "16", "4 arc_easy"]
    assert sorted(in_flight("--endpoint", "http://h:8000/v1", "--concurrency", "2")) == ["2", "2", "2", "2 arc_easy"]
    assert sorted(in_flight("--endpoint", "local")) == ["1", "1", "1", "1 arc_easy"]


def test_list_benchmarks_shows_every_benchmark(invoke, write_config):
    """--list-benchmarks shows enabled and disabled benchmarks with their tasks and settings."""
    path = write_config(CONFIG)
    result = invoke("--list-benchmarks", "--config", str(path))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for text in ("late", "arc", "off", "math", "gone", "ARC, two settings", "winogrande (disabled)", "600s"):
        assert text in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[2].strip() == "arc"  # execution order: high priority first


@pytest.mark.parametrize("run_id", ["../x", "a/b", "", ".", "..", "x" * 129, "sp ace"])
def test_bad_run_id_is_a_usage_error(invoke, write_config, run_id):
    """A run id that is not a plain folder name is refused with exit 2."""
    result = invoke("--dry-run", "--config", str(write_config(CONFIG)), "--run-id", run_id)
    assert result.exit_code == 2
    assert result.stderr == (f"error: --run-id {run_id!r}: use 1 to 128 letters, digits, '.', '_' or '-' "
                             "(not '.' or '..'); it names a folder under --output\n")


def test_bad_gpu_is_a_usage_error(invoke, write_config):
    """--gpu takes GPU ids only."""
    result = invoke("--dry-run", "--config", str(write_config(CONFIG)), "--gpu", "0;rm")
    assert result.exit_code == 2
    assert result.stderr == "error: --gpu '0;rm': expected GPU ids separated by commas, such as 0 or 0,1\n"


def test_run_without_endpoint_is_a_usage_error(invoke, write_config, tmp_path):
    """A run needs --endpoint; nothing is written without it."""
    result = invoke("--config", str(write_config(CONFIG)), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "error: --endpoint is required to run" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--model", "--tokenizer"])
def test_values_that_would_split_model_args_are_refused(invoke, write_config, flag):
    """A comma in --model or --tokenizer would change lm-eval's --model_args parsing: usage error, exit 2."""
    result = invoke("--dry-run", "--config", str(write_config(CONFIG)), flag, "a,b")
    assert result.exit_code == 2
    name = flag.lstrip("-")
    assert result.stderr == (f"error: model argument {name}='a,b' contains a comma or '=', which "
                             "lm-eval's --model_args cannot carry: rename the path or model so it has none\n")


def test_named_api_key_variable_must_exist(invoke, write_config):
    result = invoke("--dry-run", "--config", str(write_config(CONFIG)), "--api-key-env", "NOPE_KEY")
    assert result.exit_code == 2
    assert result.stderr == "error: --api-key-env NOPE_KEY: that environment variable is not set\n"


def test_modes_cannot_be_combined(invoke, write_config):
    result = invoke("--dry-run", "--validate-config", "--config", str(write_config(CONFIG)))
    assert result.exit_code == 2
    assert result.stderr == "error: --validate-config and --dry-run cannot be combined: pick one\n"


@pytest.mark.parametrize("given,completions,models", [
    ("http://h:8000", "http://h:8000/v1/completions", "http://h:8000/v1/models"),
    ("http://h:8000/", "http://h:8000/v1/completions", "http://h:8000/v1/models"),
    ("http://h:8000/v1", "http://h:8000/v1/completions", "http://h:8000/v1/models"),
    ("http://h:8000/v1/completions", "http://h:8000/v1/completions", "http://h:8000/v1/models"),
    ("http://localhost/vllm/v1/completions", "http://localhost/vllm/v1/completions",
     "http://localhost/vllm/v1/models"),
    ("https://proxy.example/team/llm/v1/", "https://proxy.example/team/llm/v1/completions",
     "https://proxy.example/team/llm/v1/models"),
])
def test_endpoint_forms_normalize(given, completions, models):
    """Every documented --endpoint form gives the completions and models URLs."""
    endpoint = normalize(given)
    assert (endpoint.completions_url, endpoint.models_url) == (completions, models)


@pytest.mark.parametrize("given,fragment", [
    ("gpu-box:8000", "expected an http(s) URL"),
    ("ftp://h/v1", "expected an http(s) URL"),
    ("http://h:8000/v1/chat/completions", "this is a chat endpoint"),
])
def test_bad_endpoints_are_usage_errors(given, fragment):
    with pytest.raises(UsageError, match=re.escape(fragment)):
        normalize(given)


def test_control_commands_do_not_import_lm_eval(tmp_path, write_config):
    """--validate-config, --dry-run and --list-benchmarks never import lm_eval, datasets or transformers."""
    path = write_config(CONFIG)
    probe = (
        "import sys\n"
        "from evalchemy.cli.app import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('lm_eval', 'datasets', 'transformers', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    for mode in ("--validate-config", "--dry-run", "--list-benchmarks"):
        done = subprocess.run([sys.executable, "-c", probe, mode, "--config", str(path)], capture_output=True,
                              text=True, cwd=PROJECT, timeout=60)
        assert "HEAVY []" in done.stderr, (mode, done.stderr)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_checks_write_nothing_and_the_dry_run_only_its_generated_task_files(tmp_path):
    """--validate-config and --list-benchmarks leave every folder as it was (lm-eval's task index, cached once per
    lm-eval version, aside); --dry-run adds only the task file generated for the dataset entry, in the cache, so that
    the printed lm_eval command runs as it is."""
    import json

    data = tmp_path / "data" / "kmmlu" / "insurance"
    data.mkdir(parents=True)
    rows = [{"question": f"질문 {i}?", "A": "가", "B": "나", "C": "다", "D": "라", "answer": 1 + i % 4,
             "Category": "보험학"} for i in range(4)]
    (data / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "benchmarks": {"domain": {"enabled": True, "tasks": ["ins"]}},
        "tasks": {"ins": {"enabled": True, "dataset": {"path": "kmmlu/insurance"}, "label": "보험학"}},
    }, ensure_ascii=False), "utf-8")
    cwd, home, cache = tmp_path / "cwd", tmp_path / "home", tmp_path / "cache"
    for folder in (cwd, home, cache):
        folder.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "EVALCHEMY_CACHE_DIR": str(cache)}
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out")]

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "evalchemy", *args, *common], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    cli("--validate-config")  # builds lm-eval's task index cache (once per lm-eval version)
    before = _files(tmp_path)
    assert [name for name in before if name.startswith("cache/")] == [
        name for name in before if name.startswith("cache/task_index_")]
    cli("--validate-config")
    cli("--list-benchmarks")
    assert _files(tmp_path) == before
    printed = cli("--dry-run", "--endpoint", "http://gpu-box:8000", "--model", "m", "--run-id", "r").stdout
    added = sorted(set(_files(tmp_path)) - set(before))
    assert len(added) == 1 and re.fullmatch(r"cache/local_tasks/[0-9a-f]{16}/ins\.yaml", added[0]), added
    assert f"--include_path {tmp_path / added[0]}".rsplit("/", 1)[0] in printed
    assert {k: v for k, v in _files(tmp_path).items() if k in before} == before
