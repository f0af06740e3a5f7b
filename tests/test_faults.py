"""Fault injection against the project's test server: every fault ends in the documented exit code, a truthful
summary, and a resumed run that finishes without re-sending answered requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalchemy import echo
from evalchemy.testserver import TestServer
from tests import taskdata
from tests.conftest import PROJECT
from tests.test_run import FAVOURED, GENERATIONS, assets, expected_capitals, run_cli  # noqa: F401 - fixture

N_CAPITALS = sum(len(c) for _, c, _ in taskdata.CAPITALS)
CAPITALS_ONLY = {"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}}
ECHO_ONLY = {"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}}


def _run(srv_url, config, out, run_id, assets, *extra):
    """One prompt per request, so that a fault after N requests hits a known set of prompts."""
    return run_cli("--endpoint", srv_url, "--config", str(config), "--output", str(out), "--run-id", run_id,
                   "--include-path", str(assets["tasks_dir"]), "--batch-size", "1", *extra)


def _summary(out: Path, run_id: str) -> dict:
    return json.loads((out / run_id / f"evalchemy_summary_{run_id}.json").read_text(encoding="utf-8"))


def test_transient_500s_are_retried_and_counted(assets, write_config, tmp_path):
    """Three 500s then answers: lm-eval retries, the benchmark succeeds with the right score, and the summary
    counts every attempt sent and the three that failed (a first 500 leaves the preflight's echo check unfinished)."""
    with TestServer(assets["tokenizer"], "test-model", fail_first=1 + 3,
                    answers={"favoured": sorted(FAVOURED)}) as srv:
        done = _run(srv.base_url, write_config(CAPITALS_ONLY), tmp_path / "o", "r", assets)
        sent = len(srv.requests)
    assert done.returncode == 0, done.stderr
    bench = _summary(tmp_path / "o", "r")["benchmarks"]["capitals"]
    assert bench["status"] == "success"
    assert bench["metrics"]["demo_capitals"]["acc"]["value"] == pytest.approx(expected_capitals())
    assert bench["requests"] == {"sent": N_CAPITALS + 3, "failed_attempts": 3, "empty_answers": 0,
                                 "truncated_prompts": 0}
    assert sent == 1 + N_CAPITALS + 3


def test_echo_without_generated_token_is_found_by_preflight_and_scored_right(assets, write_config, tmp_path):
    """A server that echoes no generated token after end-of-text (llama.cpp's): the preflight's echo check finds it
    (one request), the run uses the model that reads the prompt's own entries, and every answer's log-likelihood
    is the rule's (lm-eval's own [ctxlen:-1] would read each one-word answer as 0)."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["capitals"]}},
                           "tasks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"], "log_samples": True}}})
    with TestServer(assets["tokenizer"], "test-model", echo_without_generated=True,
                    answers={"favoured": sorted(FAVOURED)}) as srv:
        done = _run(srv.base_url, config, tmp_path / "o", "r", assets)
        probes = [r for r in srv.requests if r["prompt"] == srv.encode(echo.PROBE_TEXT)]
    assert done.returncode == 0, done.stderr
    bench = _summary(tmp_path / "o", "r")["benchmarks"]["capitals"]
    assert bench["status"] == "success"
    assert bench["metrics"]["demo_capitals"]["acc"]["value"] == pytest.approx(expected_capitals())
    [samples] = (tmp_path / "o" / "r").rglob("samples_demo_capitals_*.jsonl")
    scores = [[float(score) for score, _ in json.loads(line)["filtered_resps"]]
              for line in samples.read_text(encoding="utf-8").splitlines()]
    by_question = {q: c for q, c, _ in taskdata.CAPITALS}
    questions = [json.loads(line)["doc"]["question"] for line in samples.read_text(encoding="utf-8").splitlines()]
    assert scores == [[pytest.approx(-0.1 if w in FAVOURED else -2.0) for w in by_question[q]] for q in questions]
    assert bench["runs"][0]["lm_eval_command"].startswith("lm_eval run --model evalchemy-completions --model_args ")
    assert len(probes) == 1 and len(srv.requests) == N_CAPITALS + 1
    log = (tmp_path / "o" / "r" / "evalchemy_r.log").read_text(encoding="utf-8")
    assert "echo check: the server echoes no generated token after end-of-text" in log


@pytest.mark.parametrize("fault", ["malformed", "no_logprobs"])
def test_unusable_answers_fail_the_benchmark(assets, write_config, tmp_path, fault):
    """Invalid JSON, or answers without log-probabilities: the benchmark is failed (exit 4), never success."""
    with TestServer(assets["tokenizer"], "test-model", **{fault: True}) as srv:
        done = _run(srv.base_url, write_config(CAPITALS_ONLY), tmp_path / "o", "r", assets)
    assert done.returncode == 4, done.stderr
    summary = _summary(tmp_path / "o", "r")
    assert summary["status"] == "failed"
    bench = summary["benchmarks"]["capitals"]
    assert bench["status"] == "failed" and bench["error"].startswith("demo_capitals: ")
    assert bench["requests"]["failed_attempts"] >= 1
    assert not (tmp_path / "o" / "r" / "capitals_results.json").exists()


def test_empty_answers_fail_unless_allowed(assets, write_config, tmp_path):
    """Generations answered with null text are counted; above --max-failed-requests (default 0) the benchmark fails."""
    config = write_config(ECHO_ONLY)
    with TestServer(assets["tokenizer"], "test-model", null_text=True, root="/nowhere") as srv:
        strict = _run(srv.base_url, config, tmp_path / "o", "strict", assets)
        lenient = _run(srv.base_url, config, tmp_path / "o", "lenient", assets, "--max-failed-requests", "4")
    n = len(taskdata.ECHO_WORDS)
    assert strict.returncode == 4, strict.stderr
    bench = _summary(tmp_path / "o", "strict")["benchmarks"]["echo"]
    assert bench["status"] == "failed"
    assert bench["requests"]["empty_answers"] == n
    assert bench["error"] == (f"demo_echo: {n} request(s) got an empty answer from the endpoint (allowed: 0, "
                              "--max-failed-requests); the scores would count them as wrong")
    assert lenient.returncode == 0, lenient.stderr
    assert _summary(tmp_path / "o", "lenient")["benchmarks"]["echo"]["status"] == "success"


def test_truncated_prompts_are_counted(assets, write_config, tmp_path):
    """Prompts longer than --max-length are counted in the summary (lm-eval truncates them silently otherwise)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(assets["tokenizer"] / "tokenizer.json"))
    max_length = 13
    expected = sum(
        1 for q, choices, _ in taskdata.CAPITALS for c in choices
        if len(tokenizer.encode(f"Question: {q}\nAnswer: {c}", add_special_tokens=False).ids) > max_length - 1)
    assert expected > 0
    with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED)}) as srv:
        done = _run(srv.base_url, write_config(CAPITALS_ONLY), tmp_path / "o", "r", assets,
                    "--max-length", str(max_length))
    assert done.returncode == 0, done.stderr
    assert _summary(tmp_path / "o", "r")["benchmarks"]["capitals"]["requests"]["truncated_prompts"] == expected


def _start_server_process(assets, tmp_path, port: int, *flags) -> subprocess.Popen:
    log = tmp_path / "requests.jsonl"
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"favoured": sorted(FAVOURED), "generations": GENERATIONS}))
    proc = subprocess.Popen([sys.executable, "-m", "evalchemy.testserver", "--tokenizer", str(assets["tokenizer"]),
                             "--model-name", "test-model", "--port", str(port), "--answers", str(answers),
                             "--request-log", str(log), "--max-seconds", "120", *flags],
                            stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    assert proc.stdout.readline().startswith("listening on http://127.0.0.1:")
    return proc


def _logged_requests(tmp_path) -> list[dict]:
    path = tmp_path / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_dying_mid_benchmark_then_coming_back(assets, write_config, tmp_path):
    """The server dies after 10 answers: the benchmark fails (exit 4); once it is back, re-running the run id
    completes it and sends only the requests that were never answered."""
    port = _free_port()
    config = write_config(CAPITALS_ONLY)
    server = _start_server_process(assets, tmp_path, port, "--die-after", "10")
    try:
        first = _run(f"http://127.0.0.1:{port}", config, tmp_path / "o", "night", assets, "--concurrency", "1")
    finally:
        server.kill()
        server.wait()
    assert first.returncode == 4, first.stderr
    assert _summary(tmp_path / "o", "night")["benchmarks"]["capitals"]["status"] == "failed"
    answered = 10 - echo.CHECK_REQUESTS  # the preflight's echo check had the first answers
    assert len(_logged_requests(tmp_path)) >= 10
    before = len(_logged_requests(tmp_path))

    server = _start_server_process(assets, tmp_path, port)
    try:
        second = _run(f"http://127.0.0.1:{port}", config, tmp_path / "o", "night", assets, "--concurrency", "1")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert second.returncode == 0, second.stderr
    bench = _summary(tmp_path / "o", "night")["benchmarks"]["capitals"]
    assert bench["status"] == "success"
    assert bench["metrics"]["demo_capitals"]["acc"]["value"] == pytest.approx(expected_capitals())
    assert len(_logged_requests(tmp_path)) - before == echo.CHECK_REQUESTS + N_CAPITALS - answered


def test_kill_9_then_rerun(assets, write_config, tmp_path):
    """kill -9 of the runner mid-benchmark: its worker dies with it, the lock does not block the next run, and the
    re-run finishes without re-sending answered requests."""
    port = _free_port()
    config = write_config(CAPITALS_ONLY)
    server = _start_server_process(assets, tmp_path, port, "--latency", "0.3")
    try:
        proc = subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint", f"http://127.0.0.1:{port}",
                                 "--config", str(config), "--output", str(tmp_path / "o"), "--run-id", "k9",
                                 "--include-path", str(assets["tasks_dir"]), "--concurrency", "1",
                                 "--batch-size", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(_logged_requests(tmp_path)) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "evalchemy.worker"], capture_output=True,
                                 text=True).stdout.split()
        assert len(workers) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{workers[0]}").exists(), "the worker outlived a kill -9 of the runner"
        time.sleep(0.5)  # let the last answered request land in the log
        before = _logged_requests(tmp_path)
        rerun = _run(f"http://127.0.0.1:{port}", config, tmp_path / "o", "k9", assets, "--concurrency", "1")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert rerun.returncode == 0, rerun.stderr
    after = _logged_requests(tmp_path)
    # the echo check again, then at most the one in flight at the kill
    answered = len(before) - echo.CHECK_REQUESTS
    assert len(after) - len(before) <= echo.CHECK_REQUESTS + N_CAPITALS - answered + 1
    bench = _summary(tmp_path / "o", "k9")["benchmarks"]["capitals"]
    assert bench["metrics"]["demo_capitals"]["acc"]["value"] == pytest.approx(expected_capitals())
