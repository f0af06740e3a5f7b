"""Preflight reports every problem at once (data, endpoint, model, tokenizer), and the summary records what the run
actually used."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from evalchemy.config.model import load_schema
from evalchemy.testing.server import TestServer, build_test_tokenizer
from tests import taskdata
from tests.conftest import PROJECT

GENERATIONS = [{"contains": "apple", "text": " apple\nmore"}, {"contains": "river", "text": "river"},
               {"contains": "cloud", "text": "cloud"}]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    written = taskdata.write_tasks(folder)
    missing = folder / "missing_tasks"
    missing.mkdir()
    (missing / "gone.yaml").write_text(
        (written["tasks_dir"] / "capitals.yaml").read_text().replace("demo_capitals", "demo_gone")
        .replace("capitals.jsonl", "gone.jsonl"))
    return {"tokenizer": build_test_tokenizer(folder / "tokenizer", taskdata.vocabulary()), "missing": missing,
            **written}


def run_cli(*args, env=None, timeout=180):
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def _gone_lines(assets) -> str:
    return ("datasets missing on this machine (runs are offline):\n"
            f"  gone: task demo_gone: data file {assets['data_dir'] / 'gone.jsonl'} not found\n"
            "the data files a task YAML names must be on this machine: copy them there\n")


def test_missing_data_and_a_dead_endpoint_are_both_reported(assets, write_config, tmp_path):
    """A missing dataset and a refused connection: one exit 3 naming both, each on its own line(s), the summary's
    error carrying both, and nothing run."""
    config = write_config({"benchmarks": {"gone": {"enabled": True, "tasks": ["demo_gone"]},
                                          "echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    done = run_cli("--endpoint", "http://127.0.0.1:9/v1", "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "both", "--include-path", str(assets["tasks_dir"]), "--include-path",
                   str(assets["missing"]))
    assert done.returncode == 3, done.stderr
    problems = ("2 problems found:\n" + _gone_lines(assets) +
                "endpoint http://127.0.0.1:9/v1/models is not reachable: [Errno 111] Connection refused; is the vLLM "
                "server running and is the URL right?")
    assert f"ERROR preflight failed, nothing was run: {problems}\n" in done.stderr
    run_dir = tmp_path / "o" / "both"
    summary = json.loads((run_dir / "evalchemy_summary_both.json").read_text())
    assert summary["error"] == problems
    assert summary["exit_code"] == 3 and summary["status"] == "failed"
    assert {name: (b["status"], b["error"], b["requests"]["sent"]) for name, b in summary["benchmarks"].items()} == \
        {"gone": ("skipped", "not run: preflight failed", 0), "echo": ("skipped", "not run: preflight failed", 0)}
    assert not (run_dir / "lm_eval").exists()


def test_data_model_and_tokenizer_problems_are_reported_together(assets, write_config, tmp_path):
    """A live server: the missing dataset, the model it does not serve and a --tokenizer that is not there are all
    named in one exit 3, and no completions request is sent."""
    config = write_config({"benchmarks": {"gone": {"enabled": True, "tasks": ["demo_gone"]},
                                          "capitals": {"enabled": True, "tasks": ["demo_capitals"]}}})
    with TestServer(assets["tokenizer"], "test-model") as srv:
        done = run_cli("--endpoint", srv.base_url, "--model", "nope", "--tokenizer", str(tmp_path / "no-tokenizer"),
                       "--config", str(config), "--output", str(tmp_path / "o"), "--run-id", "three",
                       "--include-path", str(assets["tasks_dir"]), "--include-path", str(assets["missing"]))
    assert done.returncode == 3, done.stderr
    assert ("ERROR preflight failed, nothing was run: 3 problems found:\n" + _gone_lines(assets) +
            f"model 'nope' is not served by {srv.completions_url}; it serves: test-model\n"
            f"--tokenizer {tmp_path / 'no-tokenizer'}: not a folder on this disk and not in the local Hugging Face "
            "cache; nothing is downloaded: copy the model's tokenizer files here and pass --tokenizer "
            "/path/to/folder\n") in done.stderr
    assert srv.requests == []


def test_summary_records_the_concurrency_used(assets, write_config, tmp_path):
    """settings.concurrency is the number of requests the run let lm-eval keep in flight (--concurrency 3)."""
    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    with TestServer(assets["tokenizer"], "test-model", answers={"generations": GENERATIONS}) as srv:
        done = run_cli("--endpoint", srv.base_url, "--concurrency", "3", "--config", str(config), "--output",
                       str(tmp_path / "o"), "--run-id", "c3", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "c3" / "evalchemy_summary_c3.json").read_text())
    assert summary["settings"]["concurrency"] == 3
    assert "num_concurrent=3," in summary["benchmarks"]["echo"]["runs"][0]["lm_eval_command"]


def test_interrupted_preflight_is_not_called_failed(assets, write_config, tmp_path):
    """SIGTERM while preflight waits for the server: exit 143, and the summary says the run was interrupted during
    preflight, not that preflight failed."""
    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    out = tmp_path / "o"
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections and never answers
        proc = subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint",
                                 f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "--config", str(config),
                                 "--output", str(out), "--run-id", "int", "--include-path", str(assets["tasks_dir"])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run_log = out / "int" / "evalchemy_int.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (run_log.exists() and "endpoint: " in run_log.read_text()):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    summary = json.loads((out / "int" / "evalchemy_summary_int.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] == "interrupted by SIGTERM"
    assert summary["benchmarks"]["echo"]["error"] == "not run: interrupted during preflight"
    assert "preflight failed" not in stderr + run_log.read_text()


def test_korean_benchmark_name_names_its_files(assets, write_config, tmp_path):
    """A benchmark named in Hangul runs, and its results file, log, lm-eval folder and breakdown key carry the name;
    the summary still matches its schema."""
    config = write_config({"benchmarks": {"보험학": {"enabled": True, "tasks": ["demo_echo"]}}})
    with TestServer(assets["tokenizer"], "test-model", answers={"generations": GENERATIONS}) as srv:
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "ko", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "o" / "ko"
    summary = json.loads((run_dir / "evalchemy_summary_ko.json").read_text(encoding="utf-8"))
    Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
    assert summary["benchmarks"]["보험학"]["status"] == "success"
    assert summary["breakdown"]["benchmark"]["보험학_accuracy"] == summary["benchmarks"]["보험학"]["metrics"][
        "demo_echo"]["exact_match,strip"]["value"]
    assert {"보험학_results.json", "보험학_benchmark.log"} <= set(summary["benchmarks"]["보험학"]["files"])
    assert (run_dir / "보험학_results.json").is_file() and (run_dir / "lm_eval" / "보험학" / "demo_echo").is_dir()


@pytest.mark.real_model
def test_local_summary_records_one_request_at_a_time_and_the_embedded_tokenizer(tmp_path):
    """--endpoint local without --tokenizer: the summary records concurrency 1 (what was sent) and the embedded
    model's tokenizer as the tokenizer's source, as does the run log; neither says --tokenizer."""
    config = json.loads((PROJECT / "configs" / "demo_config.json").read_text(encoding="utf-8"))
    config["benchmarks"] = {"opposites": config["benchmarks"]["opposites"]}
    config["tasks"]["demo_opposites"]["limit"] = 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--endpoint", "local", "--config", str(path),
                           "--output", str(tmp_path / "out"), "--run-id", "loc",
                           "--max-failed-requests", "1"],  # the model may answer its one question with nothing
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "EVALCHEMY_HOME": ""})
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "out" / "loc"
    summary = json.loads((run_dir / "evalchemy_summary_loc.json").read_text(encoding="utf-8"))
    assert summary["settings"]["concurrency"] == 1 and summary["settings"]["batch_size"] == 1
    assert summary["tokenizer"]["source"] == "the embedded model's tokenizer"
    assert "num_concurrent=1," in summary["benchmarks"]["opposites"]["runs"][0]["lm_eval_command"]
    log = (run_dir / "evalchemy_loc.log").read_text(encoding="utf-8")
    assert f"tokenizer: {summary['tokenizer']['path']} (the embedded model's tokenizer)" in log
    assert "--tokenizer" not in json.dumps(summary["tokenizer"]) + log
