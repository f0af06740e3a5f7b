"""The lean client (default) and lm-eval's stock local-completions (--client lm-eval) on the same test server give
the same scores, stderrs, samples, per-question score files and request counts, and fail the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evalchemy.testing.server import TestServer
from tests.test_run import FAVOURED, GENERATIONS, assets, demo_config, run_cli  # noqa: F401 - fixture

CLIENTS = {"fast": (), "stock": ("--client", "lm-eval")}
VOLATILE = re.compile(r"(\"(date|start_time|end_time|total_evaluation_time_seconds|started_at|finished_at|"
                      r"duration_s|pid|host|git_hash|model_name_sanitized)\": )(\"[^\"]*\"|[0-9.e+-]+)")


STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d+")


def _rolling_task(folder: Path) -> Path:
    tasks = folder / "rolling_tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                               ["Paris is in France", "Oslo and Berlin", "the river and the cloud"]))
    (tasks / "rolling.yaml").write_text(
        "task: demo_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'texts.jsonl'}\noutput_type: loglikelihood_rolling\ntest_split: test\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1\n")
    return tasks


def _normalised(path: Path, root: Path) -> str:
    text = path.read_text(encoding="utf-8").replace(str(root), "<ROOT>")
    text = text.replace("evalchemy-completions", "<MODEL>").replace("local-completions", "<MODEL>")
    return STAMP.sub("<T>", VOLATILE.sub(r"\1<volatile>", text))


def _files(root: Path) -> dict[str, Path]:
    """Results, samples and score files by their name with lm-eval's timestamp masked."""
    return {STAMP.sub("<T>", str(p.relative_to(root))): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in {".json", ".jsonl", ".csv"} and "request_cache" not in str(p)}


def _run_both(srv, assets, write_config, tmp_path, config, *extra):
    out = {}
    for name, flag in CLIENTS.items():
        root = tmp_path / name
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(root), "--run-id", "r",
                       "--include-path", str(assets["tasks_dir"]), *extra, *flag)
        summary = json.loads((root / "r" / "evalchemy_summary_r.json").read_text(encoding="utf-8"))
        out[name] = (done, summary, root)
    return out


def test_both_clients_give_identical_results_files_and_counts(assets, write_config, tmp_path):
    """Multiple choice (English, Korean group with a per-subject breakdown) and generation with a stop string,
    every task with log_samples: every file of the two runs is the same but for times and the model type's name."""
    config = demo_config()
    for bench in ("echo",):
        config["tasks"][bench] = {"enabled": True, "tasks": config["benchmarks"][bench]["tasks"], "log_samples": True}
        config["benchmarks"][bench]["tasks"] = [bench]
    for entry in config["tasks"].values():
        entry["log_samples"] = True
    with TestServer(assets["tokenizer"], "test-model",
                    answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
        runs = _run_both(srv, assets, write_config, tmp_path, write_config(config))
        # the same requests reached the server from both clients
        half = len(srv.requests) // 2
        key = lambda body: json.dumps(body, sort_keys=True)  # noqa: E731
        assert sorted(map(key, srv.requests[:half])) == sorted(map(key, srv.requests[half:]))
    (fast_done, fast, fast_root), (stock_done, stock, stock_root) = runs["fast"], runs["stock"]
    assert fast_done.returncode == stock_done.returncode == 0, fast_done.stderr + stock_done.stderr
    for bench in fast["benchmarks"]:
        assert fast["benchmarks"][bench]["metrics"] == stock["benchmarks"][bench]["metrics"], bench
        assert fast["benchmarks"][bench]["requests"] == stock["benchmarks"][bench]["requests"], bench
    fast_files, stock_files = _files(fast_root), _files(stock_root)
    assert list(fast_files) == list(stock_files)
    assert any("samples_" in name for name in fast_files)
    for name, path in fast_files.items():
        if not path.name.startswith("evalchemy_summary"):  # compared above, field by field (durations differ)
            assert _normalised(path, fast_root) == _normalised(stock_files[name], stock_root), name
    # the request cache holds the same answers under the same keys (the lean client writes a request's at once)
    fast_cache, stock_cache = _cache_rows(fast_root), _cache_rows(stock_root)
    assert len(fast_cache) > 20  # every task's answers: dozens of prompts
    assert fast_cache == stock_cache


def _cache_rows(root: Path) -> dict[str, bytes]:
    """Every entry of the run's lm-eval request cache (SqliteDict tables: key, pickled answer)."""
    import sqlite3

    rows = {}
    for db in sorted((root / "r" / ".request_cache").rglob("*.db")):
        with sqlite3.connect(db) as connection:
            rows.update(dict(connection.execute('SELECT key, value FROM "unnamed"')))
    return rows


def test_rolling_log_likelihood_with_requests_in_flight(assets, write_config, tmp_path):
    """loglikelihood_rolling: the lean client, 16 requests in flight, gives the perplexities and samples the stock
    client gives one request at a time (the stock client fails with requests in flight: lm-eval's request cache
    is handed the rolling windows' empty keys)."""
    rolling = _rolling_task(tmp_path)
    config = write_config({"benchmarks": {"rolling": {"enabled": True, "tasks": ["rolling"]}},
                           "tasks": {"rolling": {"enabled": True, "tasks": ["demo_rolling"], "log_samples": True}}})
    roots = {}
    with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED)}) as srv:
        for name, extra in (("fast", ()), ("stock", ("--client", "lm-eval", "--concurrency", "1")),
                            ("stock16", ("--client", "lm-eval"))):
            roots[name] = tmp_path / name
            done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(roots[name]),
                           "--run-id", "r", "--include-path", str(rolling), *extra)
            assert done.returncode == (4 if name == "stock16" else 0), done.stderr
    summaries = {n: json.loads((r / "r" / "evalchemy_summary_r.json").read_text()) for n, r in roots.items()}
    fast, stock = summaries["fast"]["benchmarks"]["rolling"], summaries["stock"]["benchmarks"]["rolling"]
    assert fast["status"] == stock["status"] == "success"
    assert fast["metrics"] == stock["metrics"]
    assert fast["requests"] == stock["requests"] == {"sent": 3, "failed_attempts": 0, "empty_answers": 0,
                                                     "truncated_prompts": 0}
    assert summaries["stock16"]["benchmarks"]["rolling"]["error"] == (
        "rolling: TypeError: 'NoneType' object is not iterable")
    fast_samples = sorted((roots["fast"] / "r").rglob("samples_*.jsonl"))
    stock_samples = sorted((roots["stock"] / "r").rglob("samples_*.jsonl"))
    assert len(fast_samples) == len(stock_samples) == 1
    assert _normalised(fast_samples[0], roots["fast"]) == _normalised(stock_samples[0], roots["stock"])


CAPITALS_ONLY = {"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}}


@pytest.mark.parametrize("fault", [{"fail_first": 3}, {"malformed": True}, {"no_logprobs": True},
                                   {"hang": 30}])
def test_both_clients_fail_and_count_the_same_way(assets, write_config, tmp_path, fault):
    """HTTP 500s retried, malformed JSON, answers without log-probabilities, a request timeout, each on a fresh
    server per client: same status, same error text, same request counts (one prompt per request, one in flight,
    so counts are exact)."""
    config = write_config(CAPITALS_ONLY)
    runs, arrived = {}, {}
    for name, flag in CLIENTS.items():
        with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED)}, **fault) as srv:
            done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(tmp_path / name),
                           "--run-id", "r", "--include-path", str(assets["tasks_dir"]), "--batch-size", "1",
                           "--concurrency", "1" if "hang" in fault else "4", "--request-timeout", "1", *flag)
            arrived[name] = len([r for r in srv.requests if "logit_bias" not in r])  # not the echo check's
        summary = json.loads((tmp_path / name / "r" / "evalchemy_summary_r.json").read_text(encoding="utf-8"))
        runs[name] = (done.returncode, summary["benchmarks"]["capitals"])
    (fast_code, fast), (stock_code, stock) = runs["fast"], runs["stock"]
    assert fast_code == stock_code == (0 if "fail_first" in fault else 4)
    assert (fast["status"], fast.get("error")) == (stock["status"], stock.get("error"))
    assert fast.get("metrics") == stock.get("metrics")
    if "fail_first" in fault or "hang" in fault:
        assert fast["requests"] == stock["requests"]
        assert arrived["fast"] == arrived["stock"] == fast["requests"]["sent"]
    else:  # requests in flight when lm-eval gives up end differently from run to run: both count what arrived
        for name, bench in (("fast", fast), ("stock", stock)):
            assert bench["requests"]["failed_attempts"] >= 1
            assert arrived[name] <= bench["requests"]["sent"] <= arrived[name] + 4


def test_chunked_tokenizing_gives_the_ids_of_one_call(assets, monkeypatch):
    """A task's prompts are tokenized a chunk at a time (memory): the ids equal lm-eval's one-call ids, for
    generation contexts (tok_encode of a list) and for the log-likelihood pairs read from the memo."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalchemy.engines.lm_eval import fast_client

    monkeypatch.setattr(fast_client, "ENCODE_CHUNK", 3)
    args = dict(base_url="http://127.0.0.1:9/v1/completions", model="m", tokenizer=str(assets["tokenizer"]),
                tokenizer_backend="huggingface", tokenized_requests=True)
    fast, stock = fast_client.FastCompletionsAPI(**args), LocalCompletionsAPI(**args)
    texts = [f"Question: Which city is the capital of {c}?\nAnswer:" for c in
             ("France", "Italy", "Germany", "Spain", "Norway", "Austria", "France ", "Oslo")]
    assert fast.tok_encode(texts) == stock.tok_encode(texts) and len(stock.tok_encode(texts)) == 8

    seen = {}

    def pairs(self, requests, disable_tqdm=False):  # stands in for lm-eval's loglikelihood: the ids it would use
        seen["ids"] = [self._encode_pair(context, continuation) for context, continuation in
                       (r.args for r in requests)]
        return []

    monkeypatch.setattr(LocalCompletionsAPI, "loglikelihood", pairs)
    requests = [Instance("loglikelihood", {}, (text, f" {word}"), idx=i)
                for i, (text, word) in enumerate(zip(texts, ["Paris", "Rome", "Berlin", "Madrid"] * 2))]
    fast.loglikelihood(requests)
    assert seen["ids"] == [stock._encode_pair(*r.args) for r in requests]


def _echo_answer(choices: list[dict]) -> bytes:
    return json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": choices}).encode()


def _choice(index: int, logprobs, top) -> dict:
    tokens = [f"t{i}" for i in range(len(logprobs))]
    return {"index": index, "text": " ".join(tokens), "finish_reason": "stop",
            "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top,
                         "text_offset": list(range(len(logprobs)))}}


def test_lazy_echo_reader_gives_parse_logprobs_answers_or_hands_over():
    """The lean client reads echo answers with simdjson, only the continuation's entries: on plain answers (choices
    out of order, real-looking floats, a non-greedy token) its answers equal lm-eval's parse_logprobs of the fully
    parsed JSON; on anything else (no log-probabilities, a null entry in the continuation, a missing index, a context
    length of 0, not JSON) it returns None, so the full parse and lm-eval's own errors take over."""
    import random

    import simdjson
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalchemy.engines.lm_eval.fast_client import read_logprobs

    rng = random.Random(7)
    lps = [[None] + [-rng.random() * 10 ** rng.randint(-6, 1) for _ in range(n)] for n in (12, 30, 7)]
    tops = [[None] + [{"x": lp} if k % 5 or n == 2 else {"x": lp, "best": -1e-9} for k, lp in enumerate(row[1:])]
            for n, row in enumerate(lps)]  # choice 2 always greedy
    plain = [_choice(i, lps[i], tops[i]) for i in (2, 0, 1)]  # out of order: parse_logprobs sorts by index
    ctxlens = [4, 25, 3]
    parser = simdjson.Parser()
    expected = LocalCompletionsAPI.parse_logprobs(json.loads(_echo_answer(plain)), ctxlens=ctxlens)
    assert read_logprobs(parser, _echo_answer(plain), ctxlens) == expected
    assert [greedy for _, greedy in expected] == [False, False, True]  # both kinds are exercised

    null_logprobs = [{**plain[0], "logprobs": None}, *plain[1:]]
    null_entry = [_choice(0, lps[0][:6] + [None] + lps[0][7:], tops[0]), *plain[1:]]
    no_index = [{k: v for k, v in plain[0].items() if k != "index"}, *plain[1:]]
    for raw, lens in ((_echo_answer(null_logprobs), ctxlens), (_echo_answer(null_entry), ctxlens),
                      (_echo_answer(no_index), ctxlens), (_echo_answer(plain), [0, 25, 3]),
                      (b'{"choices": [ not json', ctxlens), (b"[]", ctxlens)):
        assert read_logprobs(parser, raw, lens) is None
    assert read_logprobs(parser, _echo_answer(plain), ctxlens) == expected  # the parser is still usable


def test_request_tasks_start_in_a_window(assets):
    """A task of many batches: the lean client keeps at most TASKS_PER_SLOT x concurrency requests started (lm-eval
    starts all 120 at once) and returns the same answers, in the same order, as lm-eval's client."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalchemy.engines.lm_eval import fast_client

    words = ["Paris", "Rome", "Berlin", "Madrid", "Oslo"]
    requests = [Instance("loglikelihood", {}, (f"Question: Which city is number {i}?\nAnswer:", f" {words[i % 5]}"),
                         idx=0) for i in range(120)]
    calls = {"now": 0, "most": 0, "all": 0}  # request calls started and not finished
    original = fast_client.FastCompletionsAPI.amodel_call

    async def counting(self, *args, **kwargs):
        calls["now"] += 1
        calls["all"] += 1
        calls["most"] = max(calls["most"], calls["now"])
        try:
            return await original(self, *args, **kwargs)
        finally:
            calls["now"] -= 1

    with TestServer(assets["tokenizer"], "m", answers={"favoured": ["Paris", "Oslo"]}) as srv:
        args = dict(base_url=srv.completions_url, model="m", tokenizer=str(assets["tokenizer"]),
                    tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=2, batch_size=1)
        stock = LocalCompletionsAPI(**args).loglikelihood(requests, disable_tqdm=True)
        fast_client.FastCompletionsAPI.amodel_call = counting
        try:
            fast = fast_client.FastCompletionsAPI(**args).loglikelihood(requests, disable_tqdm=True)
        finally:
            fast_client.FastCompletionsAPI.amodel_call = original
    assert fast == stock and len(set(stock)) == 2
    assert calls["all"] == 120 and calls["most"] == fast_client.TASKS_PER_SLOT * 2
