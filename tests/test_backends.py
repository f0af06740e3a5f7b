"""Backends chosen by name (--backend, the config's model section): chat servers, the OpenAI API's completions route,
the generative KMMLU variant, and tasks refused before anything runs when the backend cannot score them.

Scores are recomputed here from the answer key and the replies the test server is told to give."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from evalchemy.backends import echo_check as echo
from evalchemy.datasets.answers import INVALID, answer_letter
from evalchemy.testing.server import TestServer, build_test_tokenizer, prompt_count
from tests import taskdata
from tests.conftest import PROJECT

# The insurance subject's answers are 1, 1, 2, 1, 3 (A, A, B, A, C). The server replies to question i with
# REPLIES[i - 1]; the letter each states is STATED[i - 1] (None: no answer), so 4 of 5 are right.
REPLIES = ["보기 를 비교 하면 가 가 맞다. 따라서, 정답은: (A)", "정답: a", "(B) 입니다", "모르겠습니다", "따라서 정답은 C"]
STATED = ["A", "A", "B", None, "C"]
KEY = "sk-backend-test-0123456789"

REFUSAL = (
    "the chat backend cannot run log-likelihood (multiple-choice) tasks: its answers carry no log-probabilities of "
    "the prompt, which these tasks score. Refused, nothing was sent:\n"
    "{indent}  kmmlu_mc: ins_mc\n"
    "{indent}what works: a completions server with log-probabilities (--backend vllm-server --endpoint "
    "http://HOST:8000/v1/completions); for a dataset entry, its generative variant (\"mode\": \"generative\" in its "
    "dataset block); for lm-eval's KMMLU, the generative kmmlu_direct_* tasks")


def expected_generative_accuracy() -> float:
    key = ["ABCD"[a - 1] for a in taskdata.DOMAINS["insurance"][1]]
    return sum(1 for stated, right in zip(STATED, key) if stated == right) / len(key)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    return build_test_tokenizer(folder / "tokenizer", taskdata.vocabulary() + taskdata.domain_vocabulary())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    taskdata.write_rows(folder / "ins.jsonl", taskdata.kmmlu_rows("insurance"))
    return folder


def server(tokenizer, **options) -> TestServer:
    rules = [{"contains": f"보험학 test 문제 {i} ", "text": reply} for i, reply in enumerate(REPLIES, 1)]
    return TestServer(tokenizer, "test-model", answers={"generations": rules, "default_generation": "?"}, **options)


def config(tmp_path: Path, *, mc: bool = False, model: dict | None = None) -> Path:
    tasks = {"ins_gen": {"enabled": True, "label": "보험학", "dataset": {"path": "ins.jsonl", "mode": "generative"}}}
    benchmarks = {"kmmlu_gen": {"enabled": True, "tasks": ["ins_gen"]}}
    if mc:
        tasks["ins_mc"] = {"enabled": True, "dataset": {"path": "ins.jsonl"}}
        benchmarks = {"kmmlu_mc": {"enabled": True, "tasks": ["ins_mc"]}, **benchmarks}
    body = {"benchmarks": benchmarks, "tasks": tasks, **({"model": model} if model else {})}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


def run(cfg: Path, data: Path, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--config", str(cfg), "--data-dir", str(data),
                           "--output", str(out), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def summary_of(out: Path, run_id: str) -> dict:
    return json.loads((out / run_id / f"evalchemy_summary_{run_id}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("reply, letter", [
    ("풀이 ... 따라서, 정답은: (B)", "B"), ("따라서 정답은 (ｃ)", "C"), ("정답은 D입니다", "D"), ("정답: a", "A"),
    ("The answer is (C).", "C"), ("(B) 사과", "B"), ("B", "B"), ("d. 마지막", "D"),
    ("정답은: (A)\n다음 문제 ... 정답은: (C)", "A"),  # the first stated answer counts
    ("모르겠습니다", INVALID), ("Because of E", INVALID), ("", INVALID), (None, INVALID),
])
def test_answer_letter_reads_the_stated_answer(reply, letter):
    assert answer_letter(reply) == letter


def test_chat_backend_scores_the_generative_variant_on_a_chat_only_server(tmp_path, tokenizer, data):
    """A chat-only server (no /v1/completions): the generative KMMLU variant runs as chat messages, the letter is
    read from each reply, the score is the share of stated letters that match the key."""
    with server(tokenizer, completions_route=False) as srv:
        done = run(config(tmp_path), data, tmp_path / "o", "--backend", "chat", "--endpoint", srv.base_url,
                   "--run-id", "chat")
        bodies = list(srv.requests)
    assert done.returncode == 0, done.stderr
    summary = summary_of(tmp_path / "o", "chat")
    result = summary["benchmarks"]["kmmlu_gen"]
    assert result["status"] == "success"
    assert result["metrics"]["ins_gen"]["exact_match,answer_letter"]["value"] == pytest.approx(
        expected_generative_accuracy())
    assert expected_generative_accuracy() == pytest.approx(0.8)
    # one probe, then one chat request per question, each one conversation with the question in it
    assert len(bodies) == 1 + 5
    assert bodies[0]["max_tokens"] == 1
    for body in bodies[1:]:
        assert set(body) >= {"messages", "model", "max_tokens"} and "prompt" not in body and "logprobs" not in body
        assert body["model"] == "test-model" and body["messages"][0]["role"] == "user"
        assert "따라서, 정답은: (X)" in body["messages"][0]["content"]
    backend = summary["backend"]
    assert backend["name"] == "chat" and backend["lm_eval_model"] == "local-chat-completions"
    assert backend["model_args"]["base_url"] == f"{srv.base_url}/v1/chat/completions"
    assert backend["model_args"]["tokenizer_backend"] == "none" and "tokenizer" not in backend["model_args"]
    assert backend["capabilities"] == {"chat_route": True, "chat_template": True, "answer_shape": True}
    assert summary["tokenizer"]["backend"] == "none"
    assert summary["benchmarks"]["kmmlu_gen"]["runs"][0]["data"]["mode"] == "generative"


def test_generative_variant_also_runs_on_a_completions_server(tmp_path, tokenizer, data):
    """The same entry on a vLLM-like completions server: the same replies, the same score, no log-likelihood."""
    with server(tokenizer) as srv:
        done = run(config(tmp_path), data, tmp_path / "o", "--endpoint", srv.base_url, "--tokenizer",
                   str(tokenizer), "--run-id", "cmpl")
        bodies = list(srv.requests)
    assert done.returncode == 0, done.stderr
    summary = summary_of(tmp_path / "o", "cmpl")
    assert summary["benchmarks"]["kmmlu_gen"]["metrics"]["ins_gen"]["exact_match,answer_letter"]["value"] == \
        pytest.approx(expected_generative_accuracy())
    assert bodies and not any(b.get("echo") for b in bodies)  # no echo check: nothing needs log-probabilities
    assert summary["backend"]["capabilities"]["prompt_logprobs"] is None


def test_multiple_choice_on_chat_is_refused_before_any_request(tmp_path, tokenizer, data):
    """A log-likelihood task on the chat backend: exit 3 at preflight, no chat or completions request sent, the
    summary says why; --validate-config --backend chat says the same without a server (exit 2)."""
    with server(tokenizer, completions_route=False) as srv:
        done = run(config(tmp_path, mc=True), data, tmp_path / "o", "--backend", "chat", "--endpoint", srv.base_url,
                   "--run-id", "mc")
        sent = len(srv.requests)
    assert done.returncode == 3, done.stderr
    assert sent == 0
    summary = summary_of(tmp_path / "o", "mc")
    assert summary["status"] == "failed" and summary["exit_code"] == 3
    assert summary["error"] == REFUSAL.format(indent="")
    checked = run(config(tmp_path, mc=True), data, tmp_path / "o2", "--backend", "chat", "--validate-config")
    assert checked.returncode == 2
    assert checked.stderr.endswith(f"1 problem found\n  {REFUSAL.format(indent='  ')}\n"
                                   "(exit code 2: config error; nothing was run)\n")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("options, message", [
    ({"chat_template": False}, "answered HTTP 400 (As of transformers v4.44, default chat template is no longer "
                               "allowed, so you must provide a chat template if the tokenizer does not define one.): "
                               "the model has no chat template; start the server with one (vLLM: --chat-template "
                               "FILE) or use a completions backend"),
    ({"chat_route": False}, "answered HTTP 404: the server has no chat completions route; for a completions server "
                            "use --backend vllm-server"),
])
def test_chat_check_names_what_the_server_lacks(tmp_path, tokenizer, data, options, message):
    with server(tokenizer, **options) as srv:
        done = run(config(tmp_path), data, tmp_path / "o", "--backend", "chat", "--endpoint", srv.base_url,
                   "--run-id", "probe")
        chat_url = f"{srv.base_url}/v1/chat/completions"
        tasks_sent = len(srv.requests) - (1 if options.get("chat_route", True) else 0)
    assert done.returncode == 3, done.stderr
    assert summary_of(tmp_path / "o", "probe")["error"] == f"chat check: {chat_url} {message}"
    assert tasks_sent == 0


def test_config_model_section_chooses_the_backend_and_flags_override_it(tmp_path, tokenizer, data):
    """{"model": {"backend": "chat", "endpoint": URL}} runs without flags; --backend on the command line wins."""
    with server(tokenizer, completions_route=False) as srv:
        cfg = config(tmp_path, model={"backend": "chat", "endpoint": srv.base_url, "name": "test-model"})
        done = run(cfg, data, tmp_path / "o", "--run-id", "cfg")
        dry = run(cfg, data, tmp_path / "o", "--dry-run", "--backend", "vllm-server", "--tokenizer", str(tokenizer))
    assert done.returncode == 0, done.stderr
    assert summary_of(tmp_path / "o", "cfg")["backend"]["name"] == "chat"
    assert dry.returncode == 0, dry.stderr
    assert f"--model local-completions --model_args base_url={srv.base_url}/v1/completions,model=test-model," \
        in dry.stdout and "--apply_chat_template" not in dry.stdout


def test_chat_dry_run_shows_the_chat_command(tmp_path, data):
    done = run(config(tmp_path), data, tmp_path / "o", "--backend", "chat", "--endpoint", "http://lm-studio:1234/v1",
               "--model", "qwen", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert ("lm_eval run --model local-chat-completions --model_args base_url=http://lm-studio:1234/v1/chat/"
            "completions,model=qwen,tokenizer_backend=none,tokenized_requests=False,num_concurrent=16,max_retries=3,"
            "timeout=120,max_length=2048 --tasks ins_gen --batch_size 1 --apply_chat_template --output_path ") \
        in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--backend", "tgi"], "--backend tgi: no such backend; choose one of: vllm-server, local, openai-completions, "
                           "chat, hf, vllm"),
    (["--backend", "local", "--endpoint", "http://h:8000"], "--backend local starts its model on this machine and "
                                                            "takes no URL: drop --endpoint"),
    (["--backend", "chat", "--endpoint", "local"], "--endpoint local is the embedded model, not a chat endpoint: pass "
                                                   "a URL, or --backend local"),
])
def test_backend_flag_mistakes_are_usage_errors(tmp_path, data, args, message):
    done = run(config(tmp_path), data, tmp_path / "o", *args, "--run-id", "x")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "o").exists()


def test_openai_completions_needs_its_key_and_sends_it_only_as_a_header(tmp_path, tokenizer, data):
    """openai-completions against the test server standing in for the API: without OPENAI_API_KEY nothing runs
    (exit 2); with it every request carries the Bearer token and no file of the run holds the key."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    refused = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--config", str(config(tmp_path)), "--data-dir",
                              str(data), "--output", str(tmp_path / "o"), "--backend", "openai-completions",
                              "--run-id", "nokey"], capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == ("error: --backend openai-completions needs its API key: set "
                                                      "OPENAI_API_KEY in the environment")
    with server(tokenizer, api_key=KEY) as srv:
        done = run(config(tmp_path), data, tmp_path / "o", "--backend", "openai-completions", "--endpoint",
                   f"{srv.base_url}/v1/completions", "--tokenizer", str(tokenizer), "--run-id", "key",
                   env={"OPENAI_API_KEY": KEY})
        sent = sum(prompt_count(body) for body in srv.requests)
    assert done.returncode == 0, done.stderr
    assert sent == 5  # every question answered, none refused for a missing key (the server answers 401 without it)
    summary = summary_of(tmp_path / "o", "key")
    assert summary["backend"]["name"] == "openai-completions"
    assert summary["benchmarks"]["kmmlu_gen"]["metrics"]["ins_gen"]["exact_match,answer_letter"]["value"] == \
        pytest.approx(expected_generative_accuracy())
    for path in (tmp_path / "o").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in done.stdout + done.stderr


def mc_config(tmp_path: Path) -> Path:
    body = {"benchmarks": {"kmmlu_mc": {"enabled": True, "tasks": ["ins_mc"]}},
            "tasks": {"ins_mc": {"enabled": True, "label": "보험학", "dataset": {"path": "ins.jsonl"}}}}
    path = tmp_path / "mc.json"
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("options, found", [
    ({}, {"server": "vLLM 0.0.0+evalchemy.testing.server", "token_id_prompts": True, "prompts_per_request": "several"}),
    ({"version_route": False}, {"server": "not vLLM", "token_id_prompts": True, "prompts_per_request": "several"}),
    ({"version_route": False, "reject_token_ids": True},
     {"server": "not vLLM", "token_id_prompts": False, "prompts_per_request": "several"}),
    ({"version_route": False, "one_prompt_per_request": True},
     {"server": "not vLLM", "token_id_prompts": True, "prompts_per_request": "one"}),
])
def test_probe_fits_the_settings_to_the_server(tmp_path, tokenizer, data, options, found):
    """Multiple-choice on servers that take text prompts only, or one prompt per request: the probe finds it, the
    run sends what the server takes, and the score is the one the rule gives (choice A favoured: the share of
    questions whose answer is A)."""
    with TestServer(tokenizer, "test-model", answers={"favoured": ["A"]}, **options) as srv:
        done = run(mc_config(tmp_path), data, tmp_path / "o", "--endpoint", srv.base_url, "--tokenizer",
                   str(tokenizer), "--run-id", "p")
        bodies = list(srv.requests)
    assert done.returncode == 0, done.stderr
    summary = summary_of(tmp_path / "o", "p")
    assert summary["benchmarks"]["kmmlu_mc"]["metrics"]["ins_mc"]["acc"]["value"] == pytest.approx(
        taskdata.expected_accuracy("insurance"))
    capabilities = summary["backend"]["capabilities"]
    assert {k: capabilities[k] for k in found} == found
    assert capabilities["prompt_logprobs"] is True and capabilities["echo_omits_end_of_text"] is False
    probes = 0 if options.get("version_route", True) else 2  # a prompt of token ids, then two prompts
    task_bodies = bodies[probes + 2:]  # after the probe and the echo check
    assert task_bodies and sum(prompt_count(b) for b in task_bodies) == 4 * 5
    if options.get("reject_token_ids"):
        assert all(isinstance(b["prompt"], str) or isinstance(b["prompt"][0], str) for b in bodies[1:])
    if options.get("one_prompt_per_request"):
        assert all(prompt_count(b) == 1 for b in task_bodies)
        assert "--batch_size 1 " in summary["benchmarks"]["kmmlu_mc"]["runs"][0]["lm_eval_command"]


def test_a_server_that_ignores_echo_is_refused_for_multiple_choice(tmp_path, tokenizer, data):
    """Echo ignored (the answer has only the generated token's log-probability): multiple-choice cannot be scored,
    exit 3 naming the check; the generative variant runs on the same server."""
    with server(tokenizer, ignore_echo=True) as srv:
        refused = run(mc_config(tmp_path), data, tmp_path / "o", "--endpoint", srv.base_url, "--tokenizer",
                      str(tokenizer), "--run-id", "echo")
        n = len(srv.encode(echo.PROBE_TEXT))
        generative = run(config(tmp_path), data, tmp_path / "o", "--endpoint", srv.base_url, "--tokenizer",
                         str(tokenizer), "--run-id", "gen")
    assert refused.returncode == 3, refused.stderr
    assert summary_of(tmp_path / "o", "echo")["error"] == (
        f"echo check (a log-likelihood request): the server ignores echo: its answer holds 1 log-probabilities for a "
        f"prompt of {n} tokens, none of the prompt's, which multiple-choice tasks score; use a server that echoes "
        "them (vLLM), or run generation tasks (a dataset entry's \"mode\": \"generative\")")
    assert generative.returncode == 0, generative.stderr


def test_dry_run_probe_prints_what_the_server_takes_and_the_commands_that_follow(tmp_path, tokenizer, data):
    """--dry-run --probe: the preflight's checks against the server, the findings on a '# capabilities' line, and
    commands with the settings found (one prompt per request here); no task request, nothing written."""
    with TestServer(tokenizer, "test-model", version_route=False, one_prompt_per_request=True) as srv:
        done = run(mc_config(tmp_path), data, tmp_path / "o", "--endpoint", srv.base_url, "--tokenizer",
                   str(tokenizer), "--dry-run", "--probe", "--run-id", "p")
        sent = [b for b in srv.requests if b.get("max_tokens") != 1]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"# backend vllm-server at {srv.base_url}/v1/completions, model test-model, tokenizer {tokenizer}"
    assert json.loads(lines[1].removeprefix("# capabilities: ")) == {
        "completions_route": True, "server": "not vLLM", "token_id_prompts": True, "prompts_per_request": "one",
        "prompt_logprobs": True, "echo_omits_end_of_text": False, "max_model_len": 2048}
    command = next(line for line in lines if line.startswith("lm_eval run"))
    assert " --batch_size 1 " in command and ",model=test-model," in command
    assert sent == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--probe", "--endpoint", "http://h:8000"], "--probe goes with --dry-run: it checks the endpoint and prints the "
                                                 "commands it would run"),
    (["--dry-run", "--probe", "--backend", "hf", "--model", "/models/x"],
     "--probe checks a server at --endpoint; the hf backend runs on this machine (drop --probe: --dry-run shows its "
     "commands)"),
])
def test_probe_mistakes_are_usage_errors(tmp_path, data, args, message):
    done = run(config(tmp_path), data, tmp_path / "o", *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"


def test_chat_backend_sends_the_key_as_a_bearer_token_and_writes_it_nowhere(tmp_path, tokenizer, data):
    """A chat server that wants a key (the OpenAI API, a proxy in front of LM Studio): every request, the probe's
    included, carries it; no file of the run and no output holds it."""
    with server(tokenizer, completions_route=False, api_key=KEY) as srv:
        done = run(config(tmp_path), data, tmp_path / "o", "--backend", "chat", "--endpoint", srv.base_url,
                   "--run-id", "key", env={"OPENAI_API_KEY": KEY})
        answered = len(srv.requests)
    assert done.returncode == 0, done.stderr
    assert answered == 1 + 5  # the server answers 401 without the key and records nothing then
    for path in (tmp_path / "o").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in done.stdout + done.stderr


def _tree(run_dir: Path) -> list[str]:
    """The run folder's files, with lm-eval's timestamps and the served model's folder name left out."""
    import re

    names = set()
    for path in run_dir.rglob("*"):
        if path.is_file() and ".request_cache" not in path.parts and path.name != ".worker.log":
            relative = path.relative_to(run_dir).as_posix()
            names.add(re.sub(r"/[^/]+/(results|samples)_(.*?)_?\d{4}-\d\d-\d\dT[\d.-]+\.json", r"/MODEL/\1_\2.json",
                             relative))
    return sorted(re.sub(rf"_{re.escape(run_dir.name)}(\.log|\.json)$", r"_RUN\1", name) for name in names)


def test_switching_backend_keeps_the_results_tree_summary_and_store_records(tmp_path, tokenizer, data):
    """The same config on a completions server and on a chat server: the same files in the run folder, the same
    summary keys, the same score, and both runs in the store with their backend."""
    import sqlite3

    with server(tokenizer) as srv:
        first = run(config(tmp_path), data, tmp_path / "o", "--endpoint", srv.base_url, "--tokenizer",
                    str(tokenizer), "--run-id", "completions")
        second = run(config(tmp_path), data, tmp_path / "o", "--backend", "chat", "--endpoint", srv.base_url,
                     "--run-id", "chat")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert _tree(tmp_path / "o" / "completions") == _tree(tmp_path / "o" / "chat")
    a, b = summary_of(tmp_path / "o", "completions"), summary_of(tmp_path / "o", "chat")
    assert sorted(a) == sorted(b)
    assert a["benchmarks"]["kmmlu_gen"]["metrics"] == b["benchmarks"]["kmmlu_gen"]["metrics"]
    with sqlite3.connect(tmp_path / "o" / "evalchemy.db") as db:
        rows = dict(db.execute("SELECT run_id, backend FROM runs").fetchall())
    assert rows == {"completions": "vllm-server", "chat": "chat"}
    compared = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "compare", "completions", "chat", "--json",
                               "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["backends"] == {"a": "vllm-server", "b": "chat"}
    assert [(r["benchmark"], r["a"], r["b"], r["delta"]) for r in result["rows"]] == [
        ("kmmlu_gen", pytest.approx(0.8), pytest.approx(0.8), 0.0)]
