"""The embedded model (--endpoint local): a real SmolLM2 served by llama.cpp, and real lm-eval runs against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from evalchemy import local_model
from evalchemy.errors import PreflightError
from evalchemy.local_model import MODEL_ID, LocalServer
from tests.conftest import PROJECT

pytestmark = pytest.mark.real_model

DEMO = PROJECT / "tasks" / "demo" / "data"


def _post(server: LocalServer, body: dict) -> dict:
    request = urllib.request.Request(server.completions_url, data=json.dumps({"model": MODEL_ID, **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(local_model.tokenizer_dir()))


def test_built_tokenizer_matches_llama_cpp(tmp_path):
    """The tokenizer built from the GGUF gives llama.cpp's ids (English, digits, Korean)."""
    assert local_model.verify(tmp_path / "server.log") == []


def test_stop_leaves_no_process(tmp_path):
    """The server answers /v1/models with its id, and stop() leaves no process behind."""
    server = LocalServer(tmp_path / "server.log").start()
    pid = server.pid
    with urllib.request.urlopen(server.models_url, timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == [MODEL_ID]
    server.stop()
    assert not Path(f"/proc/{pid}").exists()
    server.stop()  # idempotent


def test_taken_port_is_a_preflight_error(tmp_path):
    """Asking for a port another process listens on fails with a message naming the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PreflightError) as err:
            LocalServer(tmp_path / "server.log", port=port).start()
    assert str(err.value) == (f"cannot start the embedded model server: port {port} on 127.0.0.1 is already in "
                              "use")


def test_missing_pieces_name_the_setup_command(tmp_path, monkeypatch):
    """A missing model file or tokenizer says which command sets it up."""
    monkeypatch.setattr(local_model, "MODEL_FILE", "missing.gguf")
    with pytest.raises(PreflightError, match=r"the embedded model file is missing \(.*missing.gguf\): run "
                                             r"scripts/setup.sh --local-model"):
        LocalServer(tmp_path / "server.log").start()
    monkeypatch.undo()
    monkeypatch.setenv("EVALCHEMY_LOCAL_TOKENIZER", str(tmp_path / "nothing"))
    with pytest.raises(PreflightError) as err:
        LocalServer(tmp_path / "server.log").start()
    assert str(err.value) == (f"the embedded model's tokenizer has not been built ({tmp_path / 'nothing'}): run "
                              "scripts/setup.sh --local-model")


def test_bos_override_aligns_echoed_logprobs(tmp_path, tokenizer):
    """With the BOS override the echo holds every prompt token plus one generated token, so lm-eval's
    [ctxlen:-1] slice scores the answer; without it the last prompt token is lost and the answer scores nothing."""
    context, answer = "Question: What do bees make?\nAnswer:", " honey"
    ctxlen = len(tokenizer.encode(context, add_special_tokens=False))
    prompt_ids = tokenizer.encode(context + answer, add_special_tokens=False)
    request = {"prompt": context + answer, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
    scored = {}
    for broken in (False, True):
        with LocalServer(tmp_path / f"server-{broken}.log", broken_bos=broken) as server:
            logprobs = _post(server, request)["choices"][0]["logprobs"]
        scored[broken] = logprobs["token_logprobs"][ctxlen:-1]
        if not broken:
            assert logprobs["tokens"][:-1] == [tokenizer.decode([i]) for i in prompt_ids]
    assert len(scored[False]) == len(prompt_ids) - ctxlen == 1
    assert scored[True] == []  # the broken setting is detected: the answer token is missing


def _run_demo(tmp_path, benchmarks: dict) -> dict:
    config = json.loads((PROJECT / "configs" / "demo_config.json").read_text(encoding="utf-8"))
    config["benchmarks"] = {k: v for k, v in config["benchmarks"].items() if k in benchmarks}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, ensure_ascii=False))
    done = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--endpoint", "local", "--config", str(path),
                           "--output", str(tmp_path / "out"), "--run-id", "real"], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env={**os.environ, "EVALCHEMY_HOME": ""})
    assert done.returncode == 0, done.stderr
    return json.loads((tmp_path / "out" / "real" / "evalchemy_summary_real.json").read_text(encoding="utf-8"))


def test_multiple_choice_scores_equal_the_models_own_answers(tmp_path, tokenizer):
    """English multiple choice through the runner: acc equals the accuracy computed here from the server's raw
    log-probabilities (sum over each choice's tokens, first maximum wins)."""
    summary = _run_demo(tmp_path, {"english_mc"})
    rows = [json.loads(line) for line in (DEMO / "en_mc.jsonl").read_text().splitlines()]
    correct = 0
    with LocalServer(tmp_path / "check.log") as server:
        for row in rows:
            context = f"Question: {row['question']}\nAnswer:"
            ctxlen = len(tokenizer.encode(context, add_special_tokens=False))
            scores = []
            for choice in row["choices"]:
                logprobs = _post(server, {"prompt": f"{context} {choice}", "echo": True, "logprobs": 1,
                                          "max_tokens": 1, "temperature": 0})["choices"][0]["logprobs"]
                scores.append(sum(logprobs["token_logprobs"][ctxlen:-1]))
            correct += scores.index(max(scores)) == row["answer"]
    measured = summary["benchmarks"]["english_mc"]["metrics"]["demo_en_mc"]["acc"]["value"]
    assert measured == pytest.approx(correct / len(rows))
    assert summary["endpoint"] == "local" and summary["model"] == MODEL_ID


def test_generation_scores_equal_the_models_own_answers(tmp_path):
    """Exact-match generation through the runner equals what the server answers here to the same prompts."""
    summary = _run_demo(tmp_path, {"opposites"})
    rows = [json.loads(line) for line in (DEMO / "opposites.jsonl").read_text().splitlines()]
    correct = 0
    with LocalServer(tmp_path / "check.log") as server:
        for row in rows:
            prompt = f"Answer with one word.\nQuestion: {row['question']}\nAnswer:"
            text = _post(server, {"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                  "stop": ["\n", "."]})["choices"][0]["text"]
            correct += text.lower().strip() == row["target"]
    measured = summary["benchmarks"]["opposites"]["metrics"]["demo_opposites"]["exact_match,first_word"]["value"]
    assert measured == pytest.approx(correct / len(rows))


def test_server_dying_mid_run_fails_the_benchmark_and_is_reaped(tmp_path):
    """kill -9 of the embedded server mid-benchmark: that benchmark is failed, the run goes on to the end (exit 4),
    and no server process is left."""
    import signal
    import time

    config = json.loads((PROJECT / "configs" / "demo_config.json").read_text(encoding="utf-8"))
    config["benchmarks"] = {k: v for k, v in config["benchmarks"].items() if k in ("english_mc", "opposites")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, ensure_ascii=False))
    out = tmp_path / "out"
    proc = subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint", "local", "--config", str(path),
                             "--output", str(out), "--run-id", "dies", "--request-timeout", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server_log = out / "dies" / "local_model_server.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "POST /v1/completions" not in (
            server_log.read_text(errors="replace") if server_log.exists() else ""):
        time.sleep(0.2)
    servers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "llama_cpp.server"], capture_output=True,
                             text=True).stdout.split()
    assert len(servers) == 1
    os.kill(int(servers[0]), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr
    summary = json.loads((out / "dies" / "evalchemy_summary_dies.json").read_text(encoding="utf-8"))
    assert summary["status"] == "failed"
    assert summary["benchmarks"]["english_mc"]["status"] == "failed"
    assert summary["benchmarks"]["opposites"]["status"] == "failed"  # attempted, not skipped
    assert summary["order"] == ["english_mc", "opposites"]
    assert not Path(f"/proc/{servers[0]}").exists()


def test_local_runs_resume_although_the_port_changes(tmp_path):
    """The embedded server listens on a new port each run; re-running the run id still keeps what succeeded."""
    first = _run_demo(tmp_path, {"opposites"})
    second = _run_demo(tmp_path, {"opposites"})
    assert first["benchmarks"]["opposites"]["resumed"] is False
    assert second["benchmarks"]["opposites"]["resumed"] is True
    assert second["benchmarks"]["opposites"]["metrics"] == first["benchmarks"]["opposites"]["metrics"]
