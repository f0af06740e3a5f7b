"""The checkpoint backends against the real engines on CPU: ``hf`` (transformers) and ``vllm`` (vLLM loaded in the
worker), both on the embedded model converted to a float32 Hugging Face checkpoint, run in the engines environment.

Each question's pick is recomputed here from the model's own log-probabilities (transformers, in the engines
environment), independently of lm-eval and of the runner."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from evalchemy.testing import vllm_server
from tests.conftest import PROJECT

pytestmark = pytest.mark.real_vllm

EN_MC = PROJECT / "tasks" / "demo" / "data" / "en_mc.jsonl"
# Sum of the continuation's log-probabilities after the context, as lm-eval's loglikelihood splits the pair
# (the context's trailing spaces go to the continuation; no special tokens added), then the best choice.
PICKS = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
picks = []
for line in sys.stdin.read().splitlines():
    doc = json.loads(line)
    context = "Question: " + doc["question"] + "\\nAnswer:"
    scores = []
    for choice in doc["choices"]:
        continuation = " " + choice
        ctx = tok(context, add_special_tokens=False).input_ids
        whole = tok(context + continuation, add_special_tokens=False).input_ids
        cont = whole[len(ctx):]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        scores.append(sum(lp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont)))
    picks.append(max(range(len(scores)), key=scores.__getitem__))
print(json.dumps(picks))
"""


@pytest.fixture(scope="module")
def engines() -> tuple[Path, Path]:
    python = vllm_server.ENGINES_VENV / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"real engines not installed ({vllm_server.ENGINES_VENV}): run {vllm_server.SETUP_COMMAND}")
    return python, vllm_server.checkpoint_dir()


@pytest.fixture(scope="module")
def expected_picks(engines) -> list[int]:
    python, checkpoint = engines
    done = subprocess.run([str(python), "-c", PICKS, str(checkpoint)], input=EN_MC.read_text(encoding="utf-8"),
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"benchmarks": {"english_mc": {"enabled": True, "tasks": ["demo_en_mc"]}},
                                "tasks": {"demo_en_mc": {"enabled": True, "num_fewshot": 0}}}), encoding="utf-8")
    return path


def _run(tmp_path: Path, backend: str, checkpoint: Path) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    done = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--backend", backend, "--model", str(checkpoint),
                           "--config", str(_config(tmp_path)), "--output", str(tmp_path / "out"), "--run-id", backend],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    run_dir = tmp_path / "out" / backend
    summary = json.loads((run_dir / f"evalchemy_summary_{backend}.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in
            (run_dir / "scores" / "english_mc" / "demo_en_mc.jsonl").read_text(encoding="utf-8").splitlines()]
    return done, summary, sorted(rows, key=lambda row: row["doc_id"])


@pytest.mark.parametrize("backend, lm_eval_model", [("hf", "hf"), ("vllm", "vllm")])
def test_checkpoint_backend_picks_what_the_models_log_probabilities_pick(tmp_path, engines, expected_picks, backend,
                                                                         lm_eval_model):
    """Every question's pick and the accuracy equal the ones recomputed from transformers' log-probabilities; the
    summary records the backend, the checkpoint as lm-eval's pretrained and the engine found at preflight."""
    python, checkpoint = engines
    done, summary, rows = _run(tmp_path, backend, checkpoint)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [json.loads(line)["answer"] for line in EN_MC.read_text(encoding="utf-8").splitlines()]
    assert [int(row["prediction"]) for row in rows] == expected_picks
    expected_acc = sum(p == a for p, a in zip(expected_picks, answers)) / len(answers)
    assert summary["benchmarks"]["english_mc"]["metrics"]["demo_en_mc"]["acc"]["value"] == pytest.approx(expected_acc)
    assert 0 < expected_acc < 1
    record = summary["backend"]
    assert record["name"] == backend and record["lm_eval_model"] == lm_eval_model
    assert record["model_args"]["pretrained"] == str(checkpoint.resolve())
    assert record["model_args"]["dtype"] == "float32"  # no CUDA device here
    assert record["capabilities"]["cuda_devices"] == 0 and record["capabilities"]["engine_python"] == str(python)
    assert summary["endpoint"] == f"{backend}:{checkpoint.resolve()}"
    assert summary["tokenizer"] == {"backend": "huggingface", "path": str(checkpoint.resolve()),
                                    "source": "the checkpoint folder"}


def test_checkpoint_backend_names_a_folder_that_is_not_a_checkpoint(tmp_path, engines):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}", encoding="utf-8")
    done = subprocess.run([str(PROJECT / "run_evalchemy.sh"), "--backend", "hf", "--model", str(tmp_path / "half"),
                           "--config", str(_config(tmp_path)), "--output", str(tmp_path / "out"), "--run-id", "half"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 3
    summary = json.loads((tmp_path / "out" / "half" / "evalchemy_summary_half.json").read_text(encoding="utf-8"))
    assert summary["error"] == (f"--model {tmp_path / 'half'}: the checkpoint folder has no weights (*.safetensors "
                                "or *.bin), tokenizer files (tokenizer.json)")
