"""Fault injection against the project's test server: every fault ends in the documented exit code, a truthful
summary, and a resumed run that finishes without re-sending answered requests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalchemy.backends import echo_check as echo
from evalchemy.testing.server import TestServer
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
    assert bench["runs"][0]["lm_eval_command"].startswith("lm_eval run --model evalchemy-echo-completions --model_args ")
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


@pytest.mark.parametrize("fault", ["null_text", "empty_text"])
def test_empty_answers_fail_unless_allowed(assets, write_config, tmp_path, fault):
    """Generations answered with null or "" text are counted; above --max-failed-requests (default 0) the benchmark
    fails."""
    config = write_config(ECHO_ONLY)
    with TestServer(assets["tokenizer"], "test-model", root="/nowhere", **{fault: True}) as srv:
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


def test_some_empty_generations_are_the_models_answers(assets, write_config, tmp_path):
    """A model that answers one question of four with nothing: counted as an empty answer and scored as wrong, but
    the benchmark succeeds (only null answers, or every generation empty, fail it)."""
    blank = {"generations": [{"contains": "river", "text": ""}]}
    with TestServer(assets["tokenizer"], "test-model", root="/nowhere", answers=blank) as srv:
        done = _run(srv.base_url, write_config(ECHO_ONLY), tmp_path / "o", "r", assets)
    assert done.returncode == 0, done.stderr
    bench = _summary(tmp_path / "o", "r")["benchmarks"]["echo"]
    assert bench["status"] == "success" and bench["requests"]["empty_answers"] == 1
    errors_log = (tmp_path / "o" / "r" / "evalchemy_errors_r.log").read_text(encoding="utf-8")
    assert f"demo_echo: 1 of {len(taskdata.ECHO_WORDS)} generation(s) came back empty" in errors_log


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
    proc = subprocess.Popen([sys.executable, "-m", "evalchemy.testing.server", "--tokenizer", str(assets["tokenizer"]),
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
        while len(_logged_requests(tmp_path)) < 5 + echo.CHECK_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "evalchemy.engines.lm_eval.worker"], capture_output=True,
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


def test_missing_logprobs_are_named_and_not_retried(assets, write_config, tmp_path):
    """Echo answers without log-probabilities: the benchmark's error says so (not lm-eval's TypeError), and no
    request is sent twice (asking again cannot help)."""
    with TestServer(assets["tokenizer"], "test-model", no_logprobs=True) as srv:
        # one request in flight: when lm-eval gives up, no other request is on its way to the server
        done = _run(srv.base_url, write_config(CAPITALS_ONLY), tmp_path / "o", "r", assets, "--concurrency", "1")
        bodies = [json.dumps(body, sort_keys=True) for body in srv.requests if "logit_bias" not in body]  # lm-eval's
    assert done.returncode == 4, done.stderr
    bench = _summary(tmp_path / "o", "r")["benchmarks"]["capitals"]
    assert bench["error"] == (
        'demo_capitals: this server returned no log-probabilities for an echo request ("logprobs": null); '
        "multiple-choice tasks need them: serve the model with an engine that returns prompt log-probabilities "
        "(vLLM does), or leave the multiple-choice tasks out")
    assert len(set(bodies)) == len(bodies) > 0
    # the request in flight when lm-eval gives up may leave before the server has read it: at most one more
    assert len(bodies) <= bench["requests"]["sent"] <= len(bodies) + 1


def test_request_timeout_names_the_limit_and_the_flag(assets, write_config, tmp_path):
    """A server slower than --request-timeout: the error names the per-request limit, its value and the flag,
    not a bare TimeoutError."""
    with TestServer(assets["tokenizer"], "test-model", hang=30) as srv:
        done = _run(srv.base_url, write_config(CAPITALS_ONLY), tmp_path / "o", "r", assets, "--request-timeout", "1")
    assert done.returncode == 4, done.stderr
    bench = _summary(tmp_path / "o", "r")["benchmarks"]["capitals"]
    assert bench["status"] == "failed"
    assert bench["error"] == (
        "demo_capitals: a request got no answer within the per-request timeout (1 s, --request-timeout) in any of "
        "its 3 attempt(s); raise --request-timeout, or lower --concurrency or --batch-size if the server is "
        "overloaded")


def test_request_counts_survive_the_task_timeout(assets, write_config, tmp_path):
    """The server hangs after 10 answers and the task's timeout stops the benchmark: the summary still counts
    every request that reached the server (the 10 answered and the ones hanging in flight)."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["caps"]}},
                           "tasks": {"caps": {"enabled": True, "tasks": ["demo_capitals"], "timeout": 10}}})
    with TestServer(assets["tokenizer"], "test-model", hang=60, hang_after=10) as srv:
        done = _run(srv.base_url, config, tmp_path / "o", "r", assets, "--concurrency", "4")
        arrived = len(srv.requests)
    assert done.returncode == 4, done.stderr
    bench = _summary(tmp_path / "o", "r")["benchmarks"]["capitals"]
    assert bench["status"] == "timeout"
    assert arrived == 10 + 4  # the preflight's echo check had the first answers: lm-eval sent the rest
    assert bench["requests"] == {"sent": arrived - echo.CHECK_REQUESTS, "failed_attempts": 0, "empty_answers": 0,
                                 "truncated_prompts": 0}


def test_request_counts_survive_kill_9_of_the_worker(assets, write_config, tmp_path):
    """kill -9 of the lm-eval worker mid-benchmark: the benchmark fails with that reason, and the summary counts
    every request that reached the server."""
    port = _free_port()
    server = _start_server_process(assets, tmp_path, port, "--latency", "0.3")
    try:
        proc = subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint", f"http://127.0.0.1:{port}",
                                 "--config", str(write_config(CAPITALS_ONLY)), "--output", str(tmp_path / "o"),
                                 "--run-id", "k", "--include-path", str(assets["tasks_dir"]), "--concurrency", "1",
                                 "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(_logged_requests(tmp_path)) < 5 + echo.CHECK_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "evalchemy.engines.lm_eval.worker"], capture_output=True,
                                 text=True).stdout.split()
        assert len(workers) == 1
        os.kill(int(workers[0]), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        time.sleep(0.5)  # the request in flight at the kill has long reached the server's log
        arrived = len(_logged_requests(tmp_path)) - echo.CHECK_REQUESTS  # lm-eval's, after the echo check's
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert proc.returncode == 4, stderr
    bench = _summary(tmp_path / "o", "k")["benchmarks"]["capitals"]
    assert bench["error"] == "demo_capitals: the lm-eval worker was killed by SIGKILL"
    assert 5 <= arrived < N_CAPITALS
    assert bench["requests"]["sent"] == arrived


def test_run_folder_removed_mid_run_is_named(assets, write_config, tmp_path):
    """The run folder deleted while a benchmark runs: the benchmark's error names the folder (not sqlite's
    'attempt to write a readonly database'), and the summary is still written."""
    port = _free_port()
    server = _start_server_process(assets, tmp_path, port, "--latency", "0.2")
    run_dir = tmp_path / "o" / "gone"
    try:
        proc = subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint", f"http://127.0.0.1:{port}",
                                 "--config", str(write_config(CAPITALS_ONLY)), "--output", str(tmp_path / "o"),
                                 "--run-id", "gone", "--include-path", str(assets["tasks_dir"]), "--concurrency",
                                 "1", "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(_logged_requests(tmp_path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(20):  # lm-eval may write a file into it while it goes
            shutil.rmtree(run_dir, ignore_errors=True)
            if not run_dir.exists():
                break
        _, stderr = proc.communicate(timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert proc.returncode == 4, stderr
    bench = _summary(tmp_path / "o", "gone")["benchmarks"]["capitals"]
    assert bench["status"] == "failed"
    assert bench["error"].startswith(f"demo_capitals: the run folder {run_dir} was removed or made unwritable "
                                     "during the run (")
    assert bench["error"].endswith("); leave it in place, writable, until the run ends")


def test_benchmark_logs_are_line_oriented(assets, write_config, tmp_path):
    """No progress bar redrawn with carriage returns in a benchmark log (one line per record, also under cron)."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]},
                                          "echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED),
                                                                "generations": GENERATIONS}) as srv:
        done = _run(srv.base_url, config, tmp_path / "o", "r", assets)
    assert done.returncode == 0, done.stderr
    for name in ("capitals", "echo"):
        text = (tmp_path / "o" / "r" / f"{name}_benchmark.log").read_text(encoding="utf-8")
        assert "Running loglikelihood requests" in text or "Running generate_until requests" in text
        assert "\r" not in text
