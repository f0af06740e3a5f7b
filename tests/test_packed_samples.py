"""The worker keeps lm-eval's logged samples packed (evalchemy/engines/lm_eval/packed_samples.py): with the lm-eval
this project pins, ``evaluate`` ends up holding them in a ``PackedSamples``, and every reader (the stats layer, the
score files, lm-eval's samples files) reads what lm-eval's own list held."""

from __future__ import annotations

import json
import math

import pytest
from lm_eval.api.model import LM

from evalchemy.engines.lm_eval import packed_samples
from evalchemy.engines.lm_eval.packed_samples import PackedSamples
from tests.test_run import assets  # noqa: F401 - fixture


class _RuleModel(LM):
    """Answers by a fixed rule, so two evaluations give the same samples."""

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-float(len(req.args[1])), len(req.args[1]) % 2 == 0) for req in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return [-float(len(req.args[0])) for req in requests]

    def generate_until(self, requests, disable_tqdm=False):
        return [" " + req.args[0].split()[-2] + "\n" for req in requests]


def _evaluate(tasks_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=_RuleModel(), tasks=["demo_capitals", "demo_echo"], log_samples=True,
                                   task_manager=TaskManager(include_defaults=False, include_path=[str(tasks_dir)]))


def _samples_file(tmp_path, name, task, samples) -> str:
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(tmp_path / name))
    tracker.general_config_tracker.model_name_sanitized = "m"
    tracker.date_id = "now"  # save_results_aggregated sets it when lm-eval writes its files
    tracker.save_results_samples(task_name=task, samples=samples)
    (written,) = (tmp_path / name / "m").glob(f"samples_{task}_now.jsonl")
    return written.read_text(encoding="utf-8")


def test_evaluate_keeps_its_samples_packed_and_every_reader_sees_the_same(assets, tmp_path, monkeypatch):
    from lm_eval.api.task import ConfigurableTask

    plain = _evaluate(assets["tasks_dir"])
    monkeypatch.setattr(ConfigurableTask, "apply_filters", ConfigurableTask.apply_filters)  # undone after the test
    packed_samples.install()
    packed = _evaluate(assets["tasks_dir"])

    # one sample per question and filter: 6 capital questions, 4 echo questions (its one filter, "strip")
    for task, count in (("demo_capitals", 6), ("demo_echo", 4)):
        assert type(plain["samples"][task]) is list and len(plain["samples"][task]) == count
        assert isinstance(packed["samples"][task], PackedSamples) and len(packed["samples"][task]) == count
        assert list(packed["samples"][task]) == plain["samples"][task]
        assert _samples_file(tmp_path, "packed", task, packed["samples"][task]) == \
            _samples_file(tmp_path, "plain", task, plain["samples"][task])
    assert json.dumps(packed["results"], sort_keys=True) == json.dumps(plain["results"], sort_keys=True)


def test_packed_samples_read_back_as_fresh_equal_objects():
    first = {"doc_id": 0, "arguments": [("Question: x\nAnswer:", " Paris")], "resps": [[(-1.5, False)]],
             "filtered_resps": [(-1.5, False)], "acc": 1.0, "doc": {"question": "x", "choices": ["Paris", "Rome"]}}
    odd = {"doc_id": 1, "handle": lambda: None}  # pickle refuses a lambda: kept as is
    last = {"doc_id": 2, "score": float("nan"), "target": 3}
    packed = PackedSamples([first, odd])
    packed.append(last)

    assert len(packed) == 3
    again = packed[0]
    assert again == first and again is not first
    assert type(again["arguments"][0]) is tuple  # not a JSON round trip
    again["acc"] = 0.0
    assert packed[0]["acc"] == 1.0  # each read is a fresh object
    assert packed[1] is odd
    assert math.isnan(packed[-1]["score"]) and packed[-1]["target"] == 3
    assert [s["doc_id"] for s in packed] == [0, 1, 2]
    assert [s["doc_id"] for s in packed[1:]] == [1, 2]
    with pytest.raises(IndexError):
        packed[3]
    assert repr(packed) == "PackedSamples(3 samples)"


def test_only_an_empty_accumulator_of_the_same_task_is_swapped():
    task, other = object(), object()

    def acc(owner, samples):
        return {"task": owner, "raw_metrics": {}, "logged_samples": samples}

    assert not packed_samples.swap_in(acc(other, []), task)
    assert not packed_samples.swap_in(acc(task, [{"doc_id": 0}]), task)
    assert not packed_samples.swap_in({"task": task, "logged_samples": []}, task)
    assert not packed_samples.swap_in(None, task)
    chosen = acc(task, [])
    assert packed_samples.swap_in(chosen, task) and isinstance(chosen["logged_samples"], PackedSamples)
