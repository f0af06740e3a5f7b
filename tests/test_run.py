"""Real runs: lm-eval through the runner, over real HTTP, against the project's vLLM-faithful test server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from evalchemy.config.model import load_schema
from evalchemy.testing.server import TestServer, build_test_tokenizer
from evalchemy.backends.echo_check import CHECK_REQUESTS
from tests import taskdata
from tests.conftest import PROJECT

FAVOURED = {"Paris", "Berlin", "Oslo", "A", "C"}
GENERATIONS = [{"contains": "apple", "text": " apple\nmore"}, {"contains": "river", "text": "river"},
               {"contains": "cloud", "text": "cloud"}]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    written = taskdata.write_tasks(folder)
    tokenizer = build_test_tokenizer(folder / "tokenizer", taskdata.vocabulary())
    return {"tokenizer": tokenizer, **written}


@pytest.fixture
def server(assets):
    with TestServer(assets["tokenizer"], "test-model",
                    answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
        yield srv


def expected_capitals() -> float:
    correct = 0
    for _, choices, answer in taskdata.CAPITALS:
        scores = [sum(-0.1 if w in FAVOURED else -2.0 for w in c.split()) for c in choices]
        correct += scores.index(max(scores)) == answer
    return correct / len(taskdata.CAPITALS)


def expected_korean(name: str) -> float:
    """Letter choices: 'A' and 'C' are favoured, so the model always answers A (the first maximum)."""
    rows = taskdata.KOREAN[name][1]
    return sum(1 for _, _, answer in rows if answer == 1) / len(rows)


def expected_echo() -> float:
    """First matching rule's text, cut at the stop string, whitespace removed, compared with the target."""
    correct = 0
    for word, target in taskdata.ECHO_WORDS:
        text = next((g["text"] for g in GENERATIONS if g["contains"] in word), "I do not know")
        correct += text.split("\n")[0].strip() == target
    return correct / len(taskdata.ECHO_WORDS)


VOLATILE = {"started_at", "finished_at", "duration_s", "host", "pid"}


def _mask(value, replacements):
    if isinstance(value, dict):
        return {k: "<volatile>" if k in VOLATILE else _mask(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, replacements) for v in value]
    if isinstance(value, str):
        for pattern, repl in replacements:
            value = re.sub(pattern, repl, value)
    return value


def _golden_summary(summary: dict, tmp_path: Path, port: int, assets) -> None:
    """The summary, volatile fields and machine paths masked, equals tests/golden/summary_e2e.json.
    Regenerate: EVALCHEMY_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests -k golden_or_full_run"""
    from evalchemy import __version__

    masked = _mask(summary, [
        (re.escape(str(assets["tasks_dir"].parent)), "<ASSETS>"), (re.escape(str(tmp_path)), "<TMP>"),
        (rf":{port}\b", ":<PORT>"), (r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d+", "<TIMESTAMP>"),
        (re.escape(__version__), "<VERSION>"), (r"\.request_cache/[0-9a-f]{16}", ".request_cache/<KEY>"), (r"^3\.\d+\.\d+$", "<PYTHON>"),
    ])
    path = Path(__file__).parent / "golden" / "summary_e2e.json"
    text = json.dumps(masked, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("EVALCHEMY_REGENERATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def demo_config(**overrides) -> dict:
    config = {
        "benchmarks": {
            "capitals": {"enabled": True, "description": "English multiple choice", "tasks": ["capitals"]},
            "kmmlu_domain": {"enabled": True, "description": "Korean domain subjects",
                             "tasks": ["kmmlu_insurance", "kmmlu_finance"]},
            "echo": {"enabled": True, "description": "generation, exact match", "tasks": ["demo_echo"]},
            "unused": {"enabled": False, "description": "disabled", "tasks": ["demo_echo"]},
        },
        "tasks": {
            "capitals": {"enabled": True, "tasks": ["demo_capitals"], "num_fewshot": 0, "priority": "high",
                         "log_samples": True, "output_path": "raw/capitals"},
            "kmmlu_insurance": {"enabled": True, "tasks": ["demo_kmmlu_insurance"], "label": "보험학",
                                "priority": "medium", "batch_size": 2},
            "kmmlu_finance": {"enabled": True, "tasks": ["demo_kmmlu_finance"], "label": "금융"},
        },
    }
    config.update(overrides)
    return config


def run_cli(*args, env=None, timeout=180):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_full_run_through_the_entrypoint(assets, server, write_config, tmp_path):
    """./run_evalchemy.sh writes the whole results tree; scores equal what the server's answers imply."""
    config = write_config(demo_config())
    out = tmp_path / "results"
    done = run_cli("--endpoint", server.base_url + "/v1", "--config", str(config), "--output", str(out),
                   "--run-id", "e2e", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 0, done.stderr
    run_dir = out / "e2e"
    summary_path = run_dir / "evalchemy_summary_e2e.json"
    assert done.stdout == f"{summary_path}\n"
    names = {p.name for p in run_dir.iterdir()}
    assert {"evalchemy_e2e.log", "evalchemy_errors_e2e.log", "evalchemy_summary_e2e.json",
            "capitals_results.json", "capitals_benchmark.log", "kmmlu_domain_results.json",
            "kmmlu_domain_benchmark.log", "echo_results.json", "echo_benchmark.log"} <= names
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
    assert summary["status"] == "success" and summary["exit_code"] == 0
    assert summary["model"] == "test-model"
    assert summary["tokenizer"]["backend"] == "huggingface"
    assert summary["endpoint"] == server.completions_url
    assert summary["order"] == ["capitals", "kmmlu_domain", "echo"]
    assert set(summary["benchmarks"]) == {"capitals", "kmmlu_domain", "echo", "unused"}
    assert summary["benchmarks"]["unused"]["status"] == "skipped"

    capitals = summary["benchmarks"]["capitals"]
    assert capitals["metrics"]["demo_capitals"]["acc"]["value"] == pytest.approx(expected_capitals())
    assert capitals["n_samples"] == {"demo_capitals": len(taskdata.CAPITALS)}
    samples = list((run_dir / "raw" / "capitals").rglob("samples_demo_capitals_*.jsonl"))
    assert len(samples) == 1 and len(samples[0].read_text().splitlines()) == len(taskdata.CAPITALS)

    korean = summary["breakdown"]["benchmark"]
    assert korean["kmmlu_domain_subject_accuracy"] == {
        "보험학": pytest.approx(expected_korean("insurance")), "금융": pytest.approx(expected_korean("finance"))}
    n_ins, n_fin = len(taskdata.KOREAN["insurance"][1]), len(taskdata.KOREAN["finance"][1])
    assert korean["kmmlu_domain_accuracy"] == pytest.approx(
        (expected_korean("insurance") * n_ins + expected_korean("finance") * n_fin) / (n_ins + n_fin))

    echo = summary["benchmarks"]["echo"]
    assert echo["metrics"]["demo_echo"]["exact_match,strip"]["value"] == pytest.approx(expected_echo())

    _golden_summary(summary, tmp_path, server.port, assets)
    # the preflight's echo check sent the first requests, the benchmarks the others
    assert [r.get("logit_bias") for r in server.requests[:CHECK_REQUESTS]] == [{"0": -100, "1": -100, "2": -100},
                                                                               {"2": 100}]
    assert sum(b["requests"]["sent"] for b in summary["benchmarks"].values()) == len(server.requests) - CHECK_REQUESTS

    results = json.loads((run_dir / "kmmlu_domain_results.json").read_text(encoding="utf-8"))
    assert set(results["results"]) == {"demo_kmmlu_insurance", "demo_kmmlu_finance"}
    assert "test-model" in (run_dir / "evalchemy_e2e.log").read_text(encoding="utf-8")
    # batch_size 2 for the insurance entry: some requests carried two prompts
    assert any(isinstance(r["prompt"][0], list) and len(r["prompt"]) == 2 for r in server.requests)


def test_failed_benchmark_does_not_stop_the_run(assets, server, write_config, tmp_path):
    """A benchmark whose task template is broken fails; the next one still runs; exit 4, status partial."""
    broken = assets["tasks_dir"].parent / "broken_tasks"
    broken.mkdir(exist_ok=True)
    (broken / "broken.yaml").write_text(
        (assets["tasks_dir"] / "capitals.yaml").read_text().replace("demo_capitals", "demo_broken")
        .replace('"Question: {{question}}', '"Question: {{question | no_such_filter}}'))
    config = write_config({
        "benchmarks": {"broken": {"enabled": True, "tasks": ["demo_broken"]},
                       "capitals": {"enabled": True, "tasks": ["demo_capitals"]}},
    })
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "p", "--include-path", str(assets["tasks_dir"]), "--include-path", str(broken))
    assert done.returncode == 4, done.stderr
    summary = json.loads((tmp_path / "o" / "p" / "evalchemy_summary_p.json").read_text())
    assert summary["status"] == "partial"
    assert summary["benchmarks"]["broken"]["status"] == "failed"
    assert summary["benchmarks"]["capitals"]["status"] == "success"
    assert summary["benchmarks"]["broken"]["error"]
    errors = (tmp_path / "o" / "p" / "evalchemy_errors_p.log").read_text()
    assert "benchmark broken: demo_broken failed" in errors
    assert not (tmp_path / "o" / "p" / "broken_results.json").exists()


def test_server_errors_fail_the_benchmark(assets, write_config, tmp_path):
    """Every request answered with HTTP 500: the benchmark is failed, never success (exit 4)."""
    with TestServer(assets["tokenizer"], "test-model", fail_status=500) as srv:
        config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}})
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "f", "--include-path", str(assets["tasks_dir"]), "--request-timeout", "5")
    assert done.returncode == 4, done.stderr
    summary = json.loads((tmp_path / "o" / "f" / "evalchemy_summary_f.json").read_text())
    assert summary["status"] == "failed"
    assert summary["benchmarks"]["capitals"]["status"] == "failed"


def test_task_timeout_is_recorded_and_the_run_goes_on(assets, write_config, tmp_path):
    """A hung server trips the task's timeout; the benchmark is 'timeout', the next one runs; exit 4."""
    config = write_config({
        "benchmarks": {"slow": {"enabled": True, "tasks": ["slow"]},
                       "echo": {"enabled": True, "tasks": ["demo_echo"]}},
        "tasks": {"slow": {"enabled": True, "tasks": ["demo_capitals"], "timeout": 8, "priority": "high"}},
    })
    with TestServer(assets["tokenizer"], "test-model", hang=30, hang_after=CHECK_REQUESTS) as srv:
        started = time.monotonic()
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "t", "--include-path", str(assets["tasks_dir"]), "--request-timeout", "60")
        elapsed = time.monotonic() - started
    assert done.returncode == 4, done.stderr
    summary = json.loads((tmp_path / "o" / "t" / "evalchemy_summary_t.json").read_text())
    assert summary["benchmarks"]["slow"]["status"] == "timeout"
    assert summary["benchmarks"]["slow"]["error"] == "slow: timed out after 8 s (tasks.slow.timeout)"
    assert summary["benchmarks"]["echo"]["status"] == "timeout" or elapsed < 60


def test_unreachable_endpoint_fails_preflight_fast(write_config, tmp_path, assets):
    """Connection refused: exit 3 within seconds, the URL in the message, a failed summary, nothing run."""
    config = write_config(demo_config())
    started = time.monotonic()
    done = run_cli("--endpoint", "http://127.0.0.1:9/v1", "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "down", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 3
    assert time.monotonic() - started < 10
    assert ("preflight failed, nothing was run: endpoint http://127.0.0.1:9/v1/models is not reachable: "
            "[Errno 111] Connection refused; is the vLLM server running and is the URL right?\n") in done.stderr
    assert "┃" not in done.stderr  # no score table
    summary = json.loads((tmp_path / "o" / "down" / "evalchemy_summary_down.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 3
    assert {b["status"] for b in summary["benchmarks"].values()} == {"skipped"}



def test_gpu_flag_sets_cuda_visible_devices_for_the_worker():
    """--gpu reaches what the run starts as CUDA_VISIBLE_DEVICES, with the offline variables."""
    from evalchemy.execution.pool import worker_env

    env = worker_env("0,1", "INFO")
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"


def test_several_models_need_model_flag(assets, write_config, tmp_path):
    """Two served models and no --model: exit 3 listing both; --model picks one; an unknown --model is refused."""
    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    common = ["--config", str(config), "--output", str(tmp_path / "o"), "--include-path", str(assets["tasks_dir"])]
    with TestServer(assets["tokenizer"], "test-model", extra_models=("other-model",),
                    answers={"generations": GENERATIONS}) as srv:
        done = run_cli("--endpoint", srv.base_url, "--run-id", "a", *common)
        assert done.returncode == 3
        assert (f"endpoint {srv.base_url}/v1/models serves 2 models: test-model, other-model; "
                "pass --model NAME to choose one") in done.stderr
        done = run_cli("--endpoint", srv.base_url, "--run-id", "b", "--model", "nope", *common)
        assert done.returncode == 3
        assert f"model 'nope' is not served by {srv.completions_url}; it serves: test-model, other-model" \
            in done.stderr
        done = run_cli("--endpoint", srv.base_url, "--run-id", "c", "--model", "test-model", *common)
        assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "c" / "evalchemy_summary_c.json").read_text())
    assert summary["model"] == "test-model"


def test_multiple_choice_without_tokenizer_stops_in_preflight(assets, write_config, tmp_path):
    """The server's root is not on this disk and it has no tokenizer endpoints: exit 3 saying what to pass."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}})
    with TestServer(assets["tokenizer"], "test-model", root="/models/not-here") as srv:
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "nt", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 3
    assert ("multiple-choice tasks need the model's tokenizer and none was found offline (the server reports "
            "root='/models/not-here', which is not on this disk): pass --tokenizer /path/to/model-folder (a folder "
            "with tokenizer.json), or start vLLM with --enable-tokenizer-info-endpoint") in done.stderr
    assert srv.requests == []


def test_generation_only_runs_without_tokenizer(assets, write_config, tmp_path):
    """Generation tasks need no tokenizer: string prompts are sent (tokenizer backend none)."""
    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    with TestServer(assets["tokenizer"], "test-model", root="/models/not-here",
                    answers={"generations": GENERATIONS}) as srv:
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "g", "--include-path", str(assets["tasks_dir"]), "--max-length", "512",
                       "--gpu", "0")
        prompts = [p for r in srv.requests for p in (r["prompt"] if isinstance(r["prompt"], list) else [r["prompt"]])]
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "g" / "evalchemy_summary_g.json").read_text())
    assert summary["tokenizer"]["backend"] == "none"
    assert summary["settings"]["max_length"] == 512 and summary["settings"]["gpu"] == "0"
    results = json.loads((tmp_path / "o" / "g" / "echo_results.json").read_text())
    assert results["config"]["model_args"]["max_length"] == 512  # what lm-eval itself ran with
    assert summary["benchmarks"]["echo"]["metrics"]["demo_echo"]["exact_match,strip"]["value"] == \
        pytest.approx(expected_echo())
    assert len(prompts) == len(taskdata.ECHO_WORDS) and all(isinstance(p, str) for p in prompts)


def test_tokenizer_from_server_endpoints(assets, write_config, tmp_path):
    """No local tokenizer but vLLM's /tokenizer_info and /tokenize: the remote backend scores correctly."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}})
    with TestServer(assets["tokenizer"], "test-model", root="/models/not-here", tokenizer_endpoints=True,
                    answers={"favoured": sorted(FAVOURED)}) as srv:
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "rt", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "rt" / "evalchemy_summary_rt.json").read_text())
    assert summary["tokenizer"]["backend"] == "remote"
    assert summary["benchmarks"]["capitals"]["metrics"]["demo_capitals"]["acc"]["value"] == \
        pytest.approx(expected_capitals())


def test_second_run_on_same_output_exits_5(assets, write_config, tmp_path):
    """While one run holds the output folder's lock, another exits 5 naming the holder; a dead holder does not
    block."""
    from evalchemy.execution.lock import RunLock

    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from evalchemy.execution.lock import RunLock\n"
        f"RunLock(Path({str(out)!r}), 'first').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    try:
        assert holder.stdout.readline() == "locked\n"
        done = run_cli("--endpoint", "http://127.0.0.1:9", "--config", str(config), "--output", str(out),
                       "--run-id", "second", "--include-path", str(assets["tasks_dir"]))
        assert done.returncode == 5
        assert f"error: another run holds the lock on {out}: pid {holder.pid}, run id first, started " \
            in done.stderr
        assert not (out / "second").exists()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(out, "third")
    lock.acquire()  # the killed holder's lock is gone with it
    lock.release()


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "MY_ENDPOINT_KEY"])
def test_credentials_never_reach_disk(assets, write_config, tmp_path, variable):
    """The API key from the environment (OPENAI_API_KEY, or the variable --api-key-env names) is sent to the
    endpoint and appears in no file under the output folder."""
    key = "sk-test-SECRET-4242"
    config = write_config(demo_config())
    with TestServer(assets["tokenizer"], "test-model", api_key=key,
                    answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                       "--run-id", "sec", "--include-path", str(assets["tasks_dir"]), "--log-level", "DEBUG",
                       "--api-key-env", variable, env={variable: key})
    assert done.returncode == 0, done.stderr  # the server refuses requests without the key
    assert key not in done.stdout + done.stderr
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert len(files) > 8
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_password_in_endpoint_url_is_refused_without_echoing_it(write_config, tmp_path):
    """user:password in --endpoint is a usage error whose message does not repeat the password."""
    config = write_config(demo_config())
    done = run_cli("--endpoint", "http://user:pw-SECRET-777@127.0.0.1:9/v1", "--config", str(config),
                   "--output", str(tmp_path / "o"), "--run-id", "pw")
    assert done.returncode == 2
    assert "pw-SECRET-777" not in done.stdout + done.stderr
    assert done.stderr == ("error: --endpoint 'http://***@127.0.0.1:9/v1': credentials in the URL are not supported "
                           "(lm-eval sends its own Authorization header): remove them and put the API key in "
                           "OPENAI_API_KEY, sent as a Bearer token\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_run_cleanly(assets, write_config, tmp_path, sig, code):
    """SIGTERM/SIGINT mid-benchmark: exit 143/130, summary 'interrupted' with what completed, no process left."""
    config = write_config({
        "benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]},
                       "slow": {"enabled": True, "tasks": ["slow"]}},
        "tasks": {"slow": {"enabled": True, "tasks": ["demo_capitals"], "priority": "low"}},
    })
    out = tmp_path / "o"
    with TestServer(assets["tokenizer"], "test-model", hang=60, hang_after=CHECK_REQUESTS,
                    answers={"generations": GENERATIONS}) as srv:
        proc = subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint", srv.base_url, "--config",
                                 str(config), "--output", str(out), "--run-id", "sig", "--include-path",
                                 str(assets["tasks_dir"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while len(srv.requests) <= CHECK_REQUESTS and time.monotonic() < deadline:  # past the echo check
            time.sleep(0.2)
        assert len(srv.requests) > CHECK_REQUESTS, "the run never reached the server"
        worker_pids = subprocess.run(["pgrep", "-f", "evalchemy.engines.lm_eval.worker", "-P", str(proc.pid)],
                                     capture_output=True, text=True).stdout.split()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    summary = json.loads((out / "sig" / "evalchemy_summary_sig.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["exit_code"] == code
    assert summary["benchmarks"]["echo"]["status"] in ("failed", "timeout", "success")
    assert summary["benchmarks"]["slow"]["status"] == "skipped"
    assert summary["benchmarks"]["slow"]["error"] == "not run: run interrupted"
    for pid in worker_pids:
        assert not Path(f"/proc/{pid}").exists(), "the lm-eval worker outlived the run"
    assert not (out / ".evalchemy.execution.lock").read_text()  # released


def test_rerunning_a_run_id_resumes_without_repeating_requests(assets, write_config, tmp_path):
    """Same --run-id again after a timeout: the succeeded benchmark is kept (no request), the timed-out one runs
    again without re-sending the requests answered before the timeout; a third identical run sends only the
    preflight's echo check; --fresh starts over."""
    config = write_config({
        "benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]},
                       "capitals": {"enabled": True, "tasks": ["capitals"]}},
        "tasks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"], "timeout": 8, "priority": "low"}},
    })
    out = tmp_path / "o"
    common = ["--config", str(config), "--output", str(out), "--run-id", "nightly", "--include-path",
              str(assets["tasks_dir"]), "--concurrency", "1", "--batch-size", "1", "--request-timeout", "60"]
    summary_path = out / "nightly" / "evalchemy_summary_nightly.json"
    answered_before_hang = 10
    n_capitals = sum(len(c) for _, c, _ in taskdata.CAPITALS)
    with TestServer(assets["tokenizer"], "test-model", hang=30,
                    hang_after=CHECK_REQUESTS + len(taskdata.ECHO_WORDS) + answered_before_hang,
                    answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
        first = run_cli("--endpoint", srv.base_url, *common)
        assert first.returncode == 4, first.stderr
        summary = json.loads(summary_path.read_text())
        assert summary["benchmarks"]["echo"]["status"] == "success"
        assert summary["benchmarks"]["capitals"]["status"] == "timeout"
        sent_first = len(srv.requests)

        srv.hang = 0
        second = run_cli("--endpoint", srv.base_url, *common)
        assert second.returncode == 0, second.stderr
        summary = json.loads(summary_path.read_text())
        assert summary["status"] == "success"
        assert summary["benchmarks"]["echo"]["resumed"] is True
        assert summary["benchmarks"]["capitals"]["resumed"] is False
        assert summary["benchmarks"]["capitals"]["metrics"]["demo_capitals"]["acc"]["value"] == \
            pytest.approx(expected_capitals())
        resent = srv.requests[sent_first:]
        assert all(r.get("echo") for r in resent)  # no generation request again
        assert len(resent) == CHECK_REQUESTS + n_capitals - answered_before_hang
        sent_second = len(srv.requests)

        third = run_cli("--endpoint", srv.base_url, *common)
        assert third.returncode == 0, third.stderr
        assert len(srv.requests) == sent_second + CHECK_REQUESTS
        summary = json.loads(summary_path.read_text())
        assert all(b["resumed"] for b in summary["benchmarks"].values())

        fresh = run_cli("--endpoint", srv.base_url, *common, "--fresh")
        assert fresh.returncode == 0, fresh.stderr
        assert len(srv.requests) == sent_second + 2 * CHECK_REQUESTS + len(taskdata.ECHO_WORDS) + n_capitals
        summary = json.loads(summary_path.read_text())
        assert not any(b["resumed"] for b in summary["benchmarks"].values())


def test_notify_url_receives_the_outcome_and_failures_do_not_change_the_exit_code(assets, write_config, tmp_path):
    """--notify-url gets run id, status, scores and summary path; an unreachable one is logged, exit code kept."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    try:
        with TestServer(assets["tokenizer"], "test-model", answers={"generations": GENERATIONS}) as srv:
            ok = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                         "--run-id", "n1", "--include-path", str(assets["tasks_dir"]),
                         "--notify-url", f"http://127.0.0.1:{hook.server_address[1]}/hooks/SECRET-PATH")
            down = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                           "--run-id", "n2", "--include-path", str(assets["tasks_dir"]),
                           "--notify-url", "http://127.0.0.1:9/hooks/SECRET-PATH")
    finally:
        hook.shutdown()
    assert ok.returncode == 0, ok.stderr
    assert received == [{
        "run_id": "n1", "status": "success", "exit_code": 0,
        "scores": {"echo": {"status": "success", "metric": "exact_match", "value": pytest.approx(expected_echo())}},
        "breakdown": {"benchmark": {"echo_accuracy": pytest.approx(expected_echo())}},
        "summary_path": str(tmp_path / "o" / "n1" / "evalchemy_summary_n1.json"),
    }]
    assert down.returncode == 0
    assert "notification to http://127.0.0.1:9/… failed: [Errno 111] Connection refused (the run's exit code is " \
        "unchanged)" in down.stderr
    assert "SECRET-PATH" not in ok.stderr + down.stderr
    assert "SECRET-PATH" not in (tmp_path / "o" / "n2" / "evalchemy_errors_n2.log").read_text() + \
        (tmp_path / "o" / "n2" / "evalchemy_n2.log").read_text()


def test_missing_datasets_stop_the_run_before_any_request(assets, server, write_config, tmp_path):
    """Offline by default: a missing local file and a hub dataset that is not cached are both named, exit 3, and no
    request is sent; --online lifts the check (the run then fails in lm-eval: exit 4)."""
    missing = assets["tasks_dir"].parent / "missing_tasks"
    missing.mkdir(exist_ok=True)
    (missing / "gone.yaml").write_text(
        (assets["tasks_dir"] / "capitals.yaml").read_text().replace("demo_capitals", "demo_gone")
        .replace("capitals.jsonl", "gone.jsonl"))
    config = write_config({"benchmarks": {"gone": {"enabled": True, "tasks": ["demo_gone"]},
                                          "arc": {"enabled": True, "tasks": ["arc_easy"]},
                                          "capitals": {"enabled": True, "tasks": ["demo_capitals"]}}})
    common = ["--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
              "--include-path", str(assets["tasks_dir"]), "--include-path", str(missing)]
    done = run_cli(*common, "--run-id", "offline")
    assert done.returncode == 3, done.stderr
    assert ("datasets missing on this machine (runs are offline):\n"
            f"  gone: task demo_gone: data file {assets['data_dir'] / 'gone.jsonl'} not found\n"
            "  arc: task arc_easy: dataset 'allenai/ai2_arc' (ARC-Easy) is not on this machine (not a local folder, not "
            "in the Hugging Face datasets cache, no copy in the data folder)\n"
            "import them from an archive made on a connected machine: scripts/import_data.sh ARCHIVE --data-dir "
            f"{PROJECT / 'data' / 'benchmarks'} (made there with scripts/export_data.sh --config {config} --output "
            "ARCHIVE)\n"
            "lm-eval's hub datasets can also come from a copy of the Hugging Face datasets cache, or pass --online to "
            "let lm-eval download them\n"
            "the data files a task YAML names must be on this machine: copy them there"
            ) in done.stderr
    assert server.requests == []
    config = write_config({"benchmarks": {"gone": {"enabled": True, "tasks": ["demo_gone"]},
                                          "capitals": {"enabled": True, "tasks": ["demo_capitals"]}}}, "online.json")
    online = run_cli(*common[:2], "--config", str(config), *common[4:], "--run-id", "online", "--online")
    assert online.returncode == 4, online.stderr
    summary = json.loads((tmp_path / "o" / "online" / "evalchemy_summary_online.json").read_text())
    assert summary["benchmarks"]["gone"]["status"] == "failed"
    assert summary["benchmarks"]["capitals"]["status"] == "success"


def test_lm_eval_group_fills_the_breakdown_per_subject(assets, server, write_config, tmp_path):
    """A benchmark running an lm-eval group reports the group's score and one breakdown entry per subtask."""
    config = write_config({"benchmarks": {"kmmlu": {"enabled": True, "tasks": ["demo_kmmlu_group"]}}})
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "grp", "--include-path", str(assets["tasks_dir"]))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "grp" / "evalchemy_summary_grp.json").read_text())
    ins, fin = expected_korean("insurance"), expected_korean("finance")
    n_ins, n_fin = len(taskdata.KOREAN["insurance"][1]), len(taskdata.KOREAN["finance"][1])
    weighted = (ins * n_ins + fin * n_fin) / (n_ins + n_fin)
    assert summary["breakdown"]["benchmark"] == {
        "kmmlu_accuracy": pytest.approx(weighted),
        "kmmlu_subject_accuracy": {"demo_kmmlu_insurance": pytest.approx(ins),
                                   "demo_kmmlu_finance": pytest.approx(fin)},
    }
    metrics = summary["benchmarks"]["kmmlu"]["metrics"]
    assert metrics["demo_kmmlu_group"]["acc"]["value"] == pytest.approx(weighted)  # lm-eval's size-weighted group
