"""lm-eval's request cache read and written in bulk (evalchemy/engines/lm_eval/request_cache.py): the worker's
``BulkCachingLM`` answers, writes and logs what lm-eval's ``CachingLM`` does, request for request; the lean client
hands its answers to the cache ``ROWS`` at a time and at the end of a batch."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM, hash_args
from sqlitedict import SqliteDict

from evalchemy.engines.lm_eval import fast_client, request_cache


class _RuleModel(LM):
    """Answers from the request's text; records how many requests each call got."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def loglikelihood(self, requests, disable_tqdm=False):
        self.calls.append(("loglikelihood", len(requests)))
        return [(-float(len(req.args[0]) + len(req.args[1])), len(req.args[1]) % 2 == 0) for req in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        self.calls.append(("loglikelihood_rolling", len(requests)))
        return [-float(len(req.args[0])) for req in requests]

    def generate_until(self, requests, disable_tqdm=False):
        self.calls.append(("generate_until", len(requests)))
        return [f"answer to {req.args[0]}" for req in requests]


def _requests():
    scored = [Instance("loglikelihood", {}, (f"Question {i % 9}?", f" choice {i}"), i) for i in range(12)]
    scored.append(Instance("loglikelihood", {}, ("Question 0?", " choice 0"), 12))  # asked twice in one task
    greedy = {"until": ["\n"], "max_gen_toks": 4}
    generated = [Instance("generate_until", {}, (f"Say {i}", dict(greedy)), i) for i in range(5)]
    generated.append(Instance("generate_until", {}, ("Say 0", {**greedy, "do_sample": True}), 5))  # never cached
    rolling = [Instance("loglikelihood_rolling", {}, (f"a text of {i} words",), i) for i in range(3)]
    return {"loglikelihood": scored, "generate_until": generated, "loglikelihood_rolling": rolling}


def _run(wrapper_class, db, caplog):
    model = _RuleModel()
    wrapper = wrapper_class(model, str(db))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lm_eval.api.model"):
        answers = {method: getattr(wrapper, method)(reqs) for method, reqs in _requests().items()}
    wrapper.dbdict.close()
    lines = [r.getMessage().replace(str(db), "DB") for r in caplog.records if r.name == "lm_eval.api.model"]
    with SqliteDict(str(db)) as cache:
        rows = dict(cache.items())
    return answers, model.calls, lines, rows


def test_bulk_cache_answers_writes_and_logs_as_lm_evals(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(request_cache, "ROWS", 4)  # several statements per task
    stock_db, bulk_db = tmp_path / "stock.db", tmp_path / "bulk.db"
    stock = _run(request_cache.CachingLM, stock_db, caplog)  # lm-eval's own class
    bulk = _run(request_cache.BulkCachingLM, bulk_db, caplog)
    assert bulk == stock
    answers, calls, lines, rows = bulk
    assert calls == [("loglikelihood", 13), ("generate_until", 6), ("loglikelihood_rolling", 3)]
    assert "Cached requests: 0, Requests remaining: 13" in lines
    assert len(rows) == (13 - 1) + 6 + 3  # the repeated question is one row
    assert rows[hash_args("loglikelihood", ("Question 0?", " choice 0"))] == answers["loglikelihood"][0]

    again_stock = _run(request_cache.CachingLM, stock_db, caplog)
    again_bulk = _run(request_cache.BulkCachingLM, bulk_db, caplog)
    assert again_bulk == again_stock
    answers, calls, lines, _ = again_bulk
    assert answers == bulk[0]
    assert calls == [("generate_until", 1)]  # only the sampled generation is asked again
    assert "Cached requests: 13, Requests remaining: 0" in lines and "Cached requests: 5, Requests remaining: 1" \
        in lines
    assert any("include non-deterministic sampling" in line for line in lines)


def test_lean_client_hands_answers_over_rows_at_a_time_and_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(request_cache, "ROWS", 7)
    cache = SqliteDict(str(tmp_path / "cache.db"), autocommit=True)
    client = fast_client.FastCompletionsAPI.__new__(fast_client.FastCompletionsAPI)  # only its cache methods
    client.cache_hook = SimpleNamespace(dbdict=cache)
    keys = [(f"Question {i}?", f" answer {i}") for i in range(20)]
    answers = [(-0.25 * i, i % 3 == 0) for i in range(20)]
    expected = {hash_args("loglikelihood", key): answer for key, answer in zip(keys, answers)}

    def saved():
        cache.commit()
        return dict(cache.items())

    for start in range(0, 18, 3):  # six requests of three answers: handed over at 9 and at 18
        client._keep("loglikelihood", answers[start:start + 3], keys[start:start + 3])
        assert len(saved()) == (start + 3) // 9 * 9
    client._keep("loglikelihood", answers[18:] + [(-9.0, False)], keys[18:] + [None])  # a keyless rolling piece
    assert len(saved()) == 18
    client._save()  # the end of the batch
    assert saved() == expected
    cache.close()
