"""A real vLLM OpenAI server (vLLM's CPU build from .venv-engines, serving the embedded model converted to a float32
Hugging Face checkpoint): the runner's scores against it, long prompts, and the API facts the capability probe
relies on. One server for the whole session (40-90 s to start, ~4 GB)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from evalchemy.testing import vllm_server
from evalchemy.testing.checkpoint import SERVED_MODEL_NAME
from evalchemy.testing.vllm_server import MAX_MODEL_LEN, VllmServer
from tests.conftest import PROJECT

pytestmark = pytest.mark.real_vllm

_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DEMO_TASKS = ("demo_en_mc", "demo_kmmlu_insurance", "demo_kmmlu_finance", "demo_opposites")
TEXTS = (
    "Question: What do bees make?\nAnswer: honey",
    "보험계약에서 보험료를 납부할 의무가 있는 사람은 누구인가?",
    "The year 2026 has 365 days; 3.14159 and 1,000,000.",
)
# transformers' log-probabilities of the checkpoint, in the engines environment (it has torch)
HF_LOGPROBS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
out = []
for ids in json.load(sys.stdin):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    out.append([lp[i - 1, ids[i]].item() for i in range(1, len(ids))])
print(json.dumps(out))
"""


def _require_engines() -> Path:
    python = vllm_server.ENGINES_VENV / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"real engines not installed ({vllm_server.ENGINES_VENV}): run {vllm_server.SETUP_COMMAND}")
    return python


@pytest.fixture(scope="session")
def vllm(tmp_path_factory):
    """The session's one real vLLM server; skipped only when the engines environment is not installed."""
    _require_engines()
    with VllmServer(tmp_path_factory.mktemp("vllm") / "vllm.log") as server:
        yield server
    assert server.pid is not None and not Path(f"/proc/{server.pid}").exists()


@pytest.fixture(scope="module")
def tokenizer(vllm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(vllm.checkpoint))


def _post(server: VllmServer, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(server.completions_url, data=json.dumps({"model": server.model_id, **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with _direct.open(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _echo(server: VllmServer, prompt, **extra) -> tuple[int, dict]:
    """The log-likelihood request lm-eval sends (echo, one generated token, greedy)."""
    return _post(server, {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0, **extra})


def test_engines_environment_loads_lm_evals_hf_and_vllm_models():
    """The engines environment imports evalchemy's worker and lm-eval's hf and in-process vllm models, and vLLM finds
    its CPU platform (lm-eval reads the version of the distribution "vllm", vLLM looks for "+cpu" in it)."""
    python = _require_engines()
    code = ("import importlib.metadata as m, evalchemy.engines.lm_eval.worker\n"
            "from lm_eval.models import huggingface, vllm_causallms\n"
            "from vllm.platforms import current_platform\n"
            "print(m.version('vllm'), current_platform.device_type)")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, cwd=PROJECT,
                          env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0.32.0+cpu", "cpu"]


# --- the API facts the capability probe relies on ---------------------------------------------------------------

def test_models_lists_root_and_max_model_len(vllm):
    """GET /v1/models: the served name as id, the loaded folder as root (usable as tokenizer), max_model_len."""
    data = vllm.models()["data"]
    assert [m["id"] for m in data] == [SERVED_MODEL_NAME]
    card = data[0]
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == str(vllm.checkpoint)
    assert card["max_model_len"] == MAX_MODEL_LEN


def test_echo_returns_prompt_tokens_plus_one_first_null(vllm, tokenizer):
    """Echo of a token-id prompt: one entry per prompt token plus the generated one, the first log-probability
    null (no BOS is added), the tokens as the tokenizer decodes them; a string prompt echoes the same."""
    ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    status, answer = _echo(vllm, [ids])
    assert status == 200
    logprobs = answer["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1
    assert logprobs["token_logprobs"][0] is None
    assert all(isinstance(x, float) and x <= 0 for x in logprobs["token_logprobs"][1:])
    assert logprobs["tokens"][:-1] == [tokenizer.decode([i]) for i in ids]
    assert len(logprobs["top_logprobs"]) == len(ids) + 1
    status, as_string = _echo(vllm, TEXTS[0])
    assert status == 200
    assert as_string["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(logprobs["token_logprobs"])


def test_several_token_id_prompts_in_one_request_come_back_in_order(vllm, tokenizer):
    """Eight token-id prompts of different lengths in one request: eight choices, in order, each echoing its own."""
    ids = tokenizer.encode(TEXTS[2], add_special_tokens=False)
    prompts = [ids[:n] for n in range(3, 11)]
    status, answer = _echo(vllm, prompts)
    assert status == 200
    assert [c["index"] for c in answer["choices"]] == list(range(8))
    assert [len(c["logprobs"]["token_logprobs"]) for c in answer["choices"]] == [n + 1 for n in range(3, 11)]


def test_prompt_plus_max_tokens_over_max_model_len_is_http_400(vllm, tokenizer):
    """max_model_len - 1 prompt tokens + 1 generated is accepted; max_model_len + 1 is HTTP 400 (so lm-eval's
    max_length, which keeps log-likelihood inputs to max_length - 1 tokens, must not exceed max_model_len)."""
    token = tokenizer.encode(" the", add_special_tokens=False)
    assert _echo(vllm, [token * (MAX_MODEL_LEN - 1)])[0] == 200
    status, answer = _echo(vllm, [token * MAX_MODEL_LEN])
    assert status == 400
    assert answer["error"]["code"] == 400 and "max_tokens" in answer["error"]["message"]


# --- the checkpoint ---------------------------------------------------------------------------------------------

def test_checkpoint_logprobs_equal_llama_cpp_and_vllm(vllm, tokenizer):
    """transformers' log-probabilities of the converted checkpoint equal vLLM's to 1e-4 and stay near llama.cpp's
    on the quantized GGUF (its 8-bit activations: measured mean 0.03-0.09, at most 0.35 per token)."""
    import numpy as np
    from llama_cpp import Llama

    from evalchemy.backends.llamacpp import model_file

    ids = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    done = subprocess.run([str(vllm_server.engines_python()), "-c", HF_LOGPROBS, str(vllm.checkpoint)],
                          input=json.dumps(ids), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr
    transformers_lp = json.loads(done.stdout)

    status, answer = _echo(vllm, ids)
    assert status == 200
    vllm_lp = [c["logprobs"]["token_logprobs"][1:-1] for c in answer["choices"]]

    llm = Llama(model_path=str(model_file()), n_ctx=512, logits_all=True, verbose=False, n_threads=2)
    for prompt, hf, served in zip(ids, transformers_lp, vllm_lp):
        llm.reset()
        llm.eval(prompt)
        logits = np.array(llm.scores[:len(prompt)], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        llama = np.array([log_softmax[i - 1, prompt[i]] for i in range(1, len(prompt))])
        assert len(hf) == len(served) == len(llama) == len(prompt) - 1
        assert np.abs(np.array(hf) - np.array(served)).max() < 1e-4
        assert np.abs(np.array(hf) - llama).mean() < 0.2
        assert np.abs(np.array(hf) - llama).max() < 0.75


# --- through the runner -----------------------------------------------------------------------------------------

def _runner(vllm, tmp_path, config: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--endpoint", vllm.completions_url, "--config",
                           str(config), "--output", str(tmp_path / "out"), "--run-id", run_id, *extra],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)


def _summary(tmp_path, run_id: str) -> dict:
    return json.loads((tmp_path / "out" / run_id / f"evalchemy_summary_{run_id}.json").read_text(encoding="utf-8"))


def _scores(results: dict) -> dict:
    """lm-eval's per-task metrics, less standard errors and aliases."""
    return {task: {k: v for k, v in entry.items() if "_stderr" not in k and k != "alias"}
            for task, entry in results.items()}


def _empty_opposites(server: VllmServer) -> int:
    """How many demo opposites the model answers with nothing (greedy, the task's stop sequences)."""
    empty = 0
    for line in (PROJECT / "tasks" / "demo" / "data" / "opposites.jsonl").read_text(encoding="utf-8").splitlines():
        prompt = f"Answer with one word.\nQuestion: {json.loads(line)['question']}\nAnswer:"
        status, answer = _post(server, {"prompt": prompt, "max_tokens": 8, "temperature": 0, "stop": ["\n", "."]})
        assert status == 200
        empty += not answer["choices"][0]["text"].strip()
    return empty


def test_runner_scores_equal_plain_lm_eval(vllm, tmp_path):
    """The demo through the runner against real vLLM (model and tokenizer found from /v1/models, max_length from
    max_model_len) scores exactly what plain lm-eval's CLI scores against the same server with the same settings.
    The model ends some opposites at once (end of turn, or a newline): those empty answers are its own, counted as
    the server gives them, and allowed here."""
    done = _runner(vllm, tmp_path, PROJECT / "configs" / "demo_config.json", "demo", "--max-failed-requests", "5")
    assert done.returncode == 0, done.stderr
    summary = _summary(tmp_path, "demo")
    assert summary["status"] == "success" and summary["model"] == SERVED_MODEL_NAME
    runner = {}
    for name in summary["order"]:
        bench = summary["benchmarks"][name]
        assert bench["requests"]["failed_attempts"] == 0 and bench["requests"]["truncated_prompts"] == 0
        assert bench["requests"]["empty_answers"] == (_empty_opposites(vllm) if name == "opposites" else 0)
        for path in sorted((tmp_path / "out" / "demo" / "lm_eval" / name).rglob("results_*.json")):
            runner.update(json.loads(path.read_text(encoding="utf-8"))["results"])

    args = (f"base_url={vllm.completions_url},model={SERVED_MODEL_NAME},tokenizer={vllm.checkpoint},"
            "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=16,max_retries=3,timeout=120,"
            f"max_length={MAX_MODEL_LEN}")
    plain = subprocess.run([str(PROJECT / ".venv" / "bin" / "lm_eval"), "run", "--model", "local-completions",
                            "--model_args", args, "--tasks", ",".join(DEMO_TASKS), "--batch_size", "8",
                            "--num_fewshot", "0", "--include_path", str(PROJECT / "tasks"),
                            "--output_path", str(tmp_path / "plain")],
                           capture_output=True, text=True, timeout=900, cwd=PROJECT)
    assert plain.returncode == 0, plain.stderr[-3000:]
    [results_file] = (tmp_path / "plain").rglob("results_*.json")
    expected = _scores(json.loads(results_file.read_text(encoding="utf-8"))["results"])
    assert sorted(expected) == sorted(DEMO_TASKS)
    assert _scores(runner) == expected
    assert 0 < expected["demo_en_mc"]["acc,none"]  # the model answers something right


LONG_TASK = """task: long_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}\\nQuestion: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def _long_task(tmp_path, tokenizer) -> tuple[Path, Path, int]:
    """A multiple-choice task whose prompts are ~2,500 tokens (over max_model_len): (task folder, config, requests)."""
    filler = "The insurance contract names the policyholder, the insurer and the beneficiary. " * 200
    rows = [{"context": filler, "question": "Who pays the premium?", "choices": ["the policyholder", "the moon"],
             "answer": 0},
            {"context": filler, "question": "What colour is the sky?", "choices": ["green", "blue"], "answer": 1}]
    assert all(len(tokenizer.encode(r["context"], add_special_tokens=False)) > MAX_MODEL_LEN for r in rows)
    tasks = tmp_path / "long_tasks"
    tasks.mkdir()
    data = tasks / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tasks / "long_mc.yaml").write_text(LONG_TASK.format(data=data), encoding="utf-8")
    config = tmp_path / "long_config.json"
    config.write_text(json.dumps({"benchmarks": {"long": {"enabled": True, "tasks": ["long_mc"]}},
                                  "tasks": {"long_mc": {"enabled": True, "metrics": ["acc"]}}}), encoding="utf-8")
    return tasks, config, sum(len(r["choices"]) for r in rows)


def test_long_prompts_are_truncated_to_max_model_len_not_rejected(vllm, tokenizer, tmp_path):
    """Prompts of ~2,500 tokens: with max_length taken from max_model_len the run succeeds, every request's prompt
    counted as truncated and none rejected; one token more (--max-length 2049) and vLLM answers HTTP 400, so the
    benchmark fails: max_model_len is exactly the right max_length."""
    tasks, config, requests = _long_task(tmp_path, tokenizer)
    done = _runner(vllm, tmp_path, config, "long", "--include-path", str(tasks))
    assert done.returncode == 0, done.stderr
    bench = _summary(tmp_path, "long")["benchmarks"]["long"]
    assert bench["status"] == "success"
    assert bench["requests"] == {"sent": bench["requests"]["sent"], "failed_attempts": 0, "empty_answers": 0,
                                 "truncated_prompts": requests}
    assert bench["metrics"]["long_mc"]["acc"]["value"] in (0.0, 0.5, 1.0)

    over = _runner(vllm, tmp_path, config, "over", "--include-path", str(tasks), "--max-length",
                   str(MAX_MODEL_LEN + 1))
    assert over.returncode == 4, over.stderr
    bench = _summary(tmp_path, "over")["benchmarks"]["long"]
    assert bench["status"] == "failed"
    assert bench["requests"]["failed_attempts"] >= 1
