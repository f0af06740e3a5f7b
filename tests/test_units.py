"""Unit tests of the pure parts, without processes or servers: plan, scores, summary, URL redaction, backends."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from evalchemy import plan as plan_mod, redaction
from evalchemy.backends.llamacpp import MAX_LENGTH, MODEL_ID, LlamaCppBackend
from evalchemy.backends.openai_completions import VllmServerBackend, normalize
from evalchemy.backends.registry import BACKENDS, backend_for
from evalchemy.config.model import Benchmark, Config, TaskEntry, load_schema
from evalchemy.engines.lm_eval import scores
from evalchemy.errors import EXIT_BENCHMARKS_FAILED, EXIT_OK, EXIT_PREFLIGHT, EXIT_SIGTERM, Interrupted, \
    run_exit_code
from evalchemy.results.summary import BenchmarkRecord, build_summary


def _config(tmp_path: Path) -> Config:
    entries = {
        "a": TaskEntry(name="a", tasks=("a",), priority="low"),
        "b": TaskEntry(name="b", tasks=("b",), priority="high", limit=5, num_fewshot=2, batch_size=4),
        "off": TaskEntry(name="off", tasks=("off",), enabled=False),
    }
    benchmarks = {
        "first": Benchmark("first", True, "low one", ("a",)),
        "second": Benchmark("second", True, "high one", ("b",)),
        "disabled": Benchmark("disabled", False, "off", ("a",)),
        "empty": Benchmark("empty", True, "only disabled", ("off",)),
    }
    return Config(path=tmp_path / "c.json", sha256="0" * 64, benchmarks=benchmarks, tasks=entries)


def _plan(tmp_path: Path) -> plan_mod.Plan:
    local = plan_mod.LocalTasks(data_dir=tmp_path, home=tmp_path, cache_dir=tmp_path / "cache")
    return plan_mod.build_plan(_config(tmp_path), local)


def test_plan_orders_by_priority_then_config_order_and_gives_skip_reasons(tmp_path):
    """High before low whatever the config order; skipped benchmarks last, each with its reason."""
    plan = _plan(tmp_path)
    assert [(b.name, b.priority, b.skip_reason) for b in plan.benchmarks] == [
        ("second", "high", None),
        ("first", "low", None),
        ("disabled", "-", "disabled in the config"),
        ("empty", "-", "every task it lists is disabled in the tasks section"),
    ]
    assert [b.name for b in plan.to_run] == ["second", "first"]


def test_argv_and_simple_evaluate_kwargs_agree(tmp_path):
    """The dry run's lm_eval command line and the worker's simple_evaluate() arguments say the same things."""
    run = _plan(tmp_path).to_run[0].runs[0]
    settings = plan_mod.ModelSettings(base_url="http://h:8000/v1/completions", model="m", tokenizer="/t")
    argv = plan_mod.lm_eval_argv(run, settings, "/out")
    kwargs = plan_mod.simple_evaluate_kwargs(run, settings)
    # the printed line runs lm-eval's stock client; the worker runs the lean one, which gives the same results
    assert argv[argv.index("--model") + 1] == "local-completions" and kwargs["model"] == "evalchemy-completions"
    assert argv[argv.index("--model_args") + 1] == plan_mod.format_model_args(kwargs["model_args"])
    assert argv[argv.index("--tasks") + 1].split(",") == kwargs["tasks"] == ["b"]
    assert int(argv[argv.index("--batch_size") + 1]) == kwargs["batch_size"] == 4
    assert int(argv[argv.index("--num_fewshot") + 1]) == kwargs["num_fewshot"] == 2
    assert int(argv[argv.index("--limit") + 1]) == kwargs["limit"] == 5
    assert ("--log_samples" in argv) == kwargs["log_samples"] is False


def _outcome(results: dict, label: str = "bench", metrics: tuple[str, ...] = ()):
    return SimpleNamespace(status="success", results=results, run=SimpleNamespace(metrics=metrics, label=label,
                                                                                  entry=label))


def test_scores_primary_metric_and_sample_weighted_accuracy():
    """acc is primary over acc_norm; the benchmark's accuracy weights each subject by its sample count."""
    results = {
        "results": {
            "grp": {"acc,none": 0.5},
            "kmmlu_x": {"acc,none": 0.8, "acc_stderr,none": 0.1, "acc_norm,none": 0.1},
            "kmmlu_y": {"acc,none": 0.2, "acc_stderr,none": "N/A"},
        },
        "groups": {"grp": {}},
        "n-samples": {"kmmlu_x": {"original": 30, "effective": 30}, "kmmlu_y": {"original": 10, "effective": 10}},
    }
    got = scores.benchmark_scores([_outcome(results)])
    assert got["primary_metric"] == "acc"
    assert got["accuracy"] == pytest.approx((0.8 * 30 + 0.2 * 10) / 40)
    assert got["subject_accuracy"] == {"kmmlu_x": 0.8, "kmmlu_y": 0.2}
    assert got["n_samples"] == {"kmmlu_x": 30, "kmmlu_y": 10}
    assert got["metrics"]["kmmlu_x"]["acc"] == {"value": 0.8, "stderr": 0.1}
    assert got["metrics"]["kmmlu_y"]["acc"] == {"value": 0.2, "stderr": None}


def test_scores_single_task_is_labelled_by_its_entry_and_filters_are_kept():
    """One leaf task: its subject is the entry's label; exact_match with a filter is the primary metric."""
    results = {"results": {"t": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.05}},
               "n-samples": {"t": {"original": 8, "effective": 4}}}
    got = scores.benchmark_scores([_outcome(results, label="보험학", metrics=("exact_match",))])
    assert got["primary_metric"] == "exact_match"
    assert got["subject_accuracy"] == {"보험학": 0.25}
    assert got["accuracy"] == 0.25
    assert got["n_samples"] == {"t": 4}


def test_summary_round_trips_through_its_json_schema():
    """A summary built from records validates against summary.schema.json and survives JSON unchanged."""
    record = BenchmarkRecord(name="b", description="d", status="success", tasks=["t"], priority="high",
                             metrics={"t": {"acc": {"value": 0.5, "stderr": 0.1}}}, n_samples={"t": 4},
                             primary_metric="acc", accuracy=0.5, subject_accuracy={"t": 0.5}, duration_s=1.23456)
    skipped = BenchmarkRecord(name="s", description="", status="skipped", tasks=[], priority="-",
                              error="disabled in the config")
    summary = build_summary(run_id="r1", status="success", exit_code=0, started_at="2026-01-01T00:00:00+00:00",
                            finished_at="2026-01-01T00:00:01+00:00", duration_s=1.0, endpoint="local",
                            model=MODEL_ID, tokenizer=None, config_path="/c.json", config_sha256="0" * 64,
                            settings={"batch_size": 1, "concurrency": 1, "max_length": MAX_LENGTH,
                                      "request_timeout_s": 120, "max_retries": 3, "max_failed_requests": 0,
                                      "gpu": None}, versions={"evalchemy": "0", "lm_eval": None, "python": "3"},
                            records=[record, skipped], error=None,
                            files={"run_log": "evalchemy_r1.log", "errors_log": "evalchemy_errors_r1.log",
                                   "summary": "evalchemy_summary_r1.json"})
    again = json.loads(json.dumps(summary))
    assert again == summary
    jsonschema.validate(again, load_schema("summary.schema.json"))
    assert again["order"] == ["b"]
    assert again["counts"]["skipped"] == 1
    assert again["breakdown"]["benchmark"] == {"b_accuracy": 0.5}
    assert again["benchmarks"]["b"]["duration_s"] == 1.235


def test_one_url_redactor_hides_credentials_query_values_and_fragments():
    """redaction.redact_url is what endpoint messages use; strip_credentials is what the summary records."""
    assert redaction.redact_url("http://user:pw@h:8000/v1?api_key=SECRET&x#frag") == "http://***@h:8000/v1?api_key=***&***#***"
    assert redaction.redact_url("not a url") == "not a url"
    assert redaction.strip_credentials("https://u:p@h:8443/v1/completions?k=v") == "https://h:8443/v1/completions"
    assert normalize("http://gpu-box:8000").display == "http://gpu-box:8000/v1/completions"
    assert redaction.redact_url("http://u:p@[::1]:8000/v1") == "http://***@[::1]:8000/v1"
    assert redaction.redact_url("http://[::1") == "http://[::1"  # unparsable: shown as it is, nothing raised


def test_proxy_store_and_broker_urls_are_shown_by_the_one_redactor():
    """Proxy, store and broker URLs in messages go through redaction.redact_url: user and password hidden."""
    from evalchemy import proxy
    from evalchemy.queue import broker
    from evalchemy.store import db

    assert proxy.display("http://squid:pw-1@proxy.lan:3128") == "http://***@proxy.lan:3128"
    assert db.display("postgresql://evalchemy:pw-2@store-host:5432/evalchemy") == "postgresql://***@store-host:5432/evalchemy"
    assert broker.display("redis://:pw-3@queue-host:6379/0") == "redis://***@queue-host:6379/0"
    assert proxy.display is db.display is broker.display is redaction.redact_url


def test_backends_are_registered_and_picked_by_endpoint_or_name():
    """'local' is the embedded model; any URL (or none yet) is a vLLM server; the others only by name."""
    assert sorted(BACKENDS) == ["chat", "hf", "local", "openai-completions", "vllm", "vllm-server"]
    local = backend_for("local")
    assert isinstance(local, LlamaCppBackend)
    assert (local.one_request_at_a_time, local.string_prompts, local.runs_here) == (True, True, True)
    assert local.default_max_length == MAX_LENGTH
    assert local.endpoint_id("http://127.0.0.1:5555/v1/completions") == "local"
    for endpoint in ("http://gpu-box:8000", None):
        server = backend_for(endpoint)
        assert isinstance(server, VllmServerBackend)
        assert (server.one_request_at_a_time, server.string_prompts, server.default_max_length) == (False, False, None)
        assert server.default_tokenizer() is None
    assert backend_for("http://h/v1/completions").endpoint_id("http://h/v1/completions") == "http://h/v1/completions"
    chat = backend_for("http://h:1234", "chat")
    assert (chat.name, chat.loglikelihood, chat.chat, chat.one_prompt_per_request) == ("chat", False, True, True)
    assert chat.normalize("http://h:1234/v1").completions_url == "http://h:1234/v1/chat/completions"
    assert chat.normalize("http://h:1234/v1/chat/completions").models_url == "http://h:1234/v1/models"
    openai = backend_for(None, "openai-completions")
    assert (openai.requires_key, openai.default_endpoint) == (True, "https://api.openai.com/v1/completions")
    with pytest.raises(LookupError):
        backend_for("http://h", "tgi")


def test_run_exit_code_is_one_map():
    """Preflight failure 3, a failed benchmark 4, a signal its own code, success 0."""
    assert run_exit_code(internal=False, interrupted=None, preflight_failed=False, succeeded=True) == EXIT_OK
    assert run_exit_code(internal=False, interrupted=None, preflight_failed=True, succeeded=False) == EXIT_PREFLIGHT
    assert run_exit_code(internal=False, interrupted=None, preflight_failed=False,
                         succeeded=False) == EXIT_BENCHMARKS_FAILED
    assert run_exit_code(internal=False, interrupted=Interrupted(15), preflight_failed=True,
                         succeeded=False) == EXIT_SIGTERM
    assert run_exit_code(internal=True, interrupted=Interrupted(15), preflight_failed=True, succeeded=True) == 1


def test_store_and_report_name_the_backend_the_summary_records():
    """The store's backend column and the report's Backend line come from the summary's ``backend`` record; summaries
    written before it existed are named by their endpoint ("local" for the embedded model)."""
    from evalchemy.reports.run_report import _backend
    from evalchemy.store.record import backend_name

    recorded = {"endpoint": "http://h:8000/v1/completions",
                "backend": {"name": "vllm-server", "lm_eval_model": "evalchemy-completions", "model_args": {}}}
    assert backend_name(recorded) == "vllm-server"
    assert _backend(recorded) == "vllm-server (lm-eval evalchemy-completions)"
    assert backend_name({"endpoint": "local"}) == "local"
    assert backend_name({"endpoint": "http://h:8000/v1/completions"}) == "vllm-server"
    assert _backend({"endpoint": "local"}) == "local (lm-eval local-completions)"


def test_worker_protocol_round_trips_and_refuses_other_lines():
    """Job and Answer lines round-trip through JSON; a line that is not exactly such an object is a ProtocolError
    naming what is wrong."""
    from evalchemy.engines.lm_eval.protocol import Answer, Job, ProtocolError

    job = Job(id="b/e", log_path="/r/b_benchmark.log", output_path="/r/lm_eval/b/e", kwargs={"model": "m", "limit": 2},
              task_folders=("/t/one", "/t/두"), credentials_free_base_url="http://h/v1/completions", scores_dir="/r/s")
    assert Job.from_line(job.to_line()) == job
    answer = Answer(id="b/e", ok=True, results={"results": {"t": {"acc,none": 0.5}}}, files=("/r/x.json",),
                    score_files=("/r/s/t.jsonl",), duration_s=1.5, requests={"sent": 3}, stats={"t": {}})
    assert Answer.from_line(answer.to_json()) == answer
    assert Answer.from_line('{"id": "b/e", "ok": false, "error": "boom"}') == Answer(id="b/e", ok=False, error="boom")
    with pytest.raises(ProtocolError, match=r"^Answer line: missing \['ok'\], unknown \['extra'\]$"):
        Answer.from_line('{"id": "b/e", "extra": 1}')
    with pytest.raises(ProtocolError, match="^not a JSON Job line"):
        Job.from_line(b"Traceback (most recent call last):")
    with pytest.raises(ProtocolError, match="^a Job is a JSON object, got list$"):
        Job.from_line("[]")


def test_embedded_servers_top_logprob_sort_gives_the_full_sorts_first_entries():
    """llama-cpp-python's ``sorted(zip(logprobs, range(n)), reverse=True)[:k]`` is answered from a partial selection:
    the same first entries in the same order (ties broken by the larger token id, as the full sort does); any other
    call is the built-in sort."""
    import numpy as np

    from evalchemy.backends.llamacpp_serve import MAX_TOP_LOGPROBS, top_sorted

    rng = np.random.default_rng(7)
    values = np.round(rng.normal(-10, 3, 49_152), 1).astype(np.float32)  # rounded: many ties
    values[[5, 900, 40_000]] = values.max() + 1  # a three-way tie at the top
    full = sorted(zip(values, range(len(values))), reverse=True)
    fast = top_sorted(zip(values, range(len(values))), reverse=True)
    assert len(fast) >= MAX_TOP_LOGPROBS
    assert fast[:MAX_TOP_LOGPROBS] == full[:MAX_TOP_LOGPROBS]
    assert [i for _, i in fast[:3]] == [40_000, 900, 5]
    assert type(fast[0][0]) is type(full[0][0]) and type(fast[0][1]) is int
    assert top_sorted([3, 1, 2]) == [1, 2, 3] and top_sorted([3, 1, 2], reverse=True) == [3, 2, 1]
    started = zip(values, range(len(values)))
    next(started)  # an iterated zip is not the pattern: the built-in sort
    assert top_sorted(started, reverse=True) == full[:0] + sorted(zip(values[1:], range(1, len(values))), reverse=True)


def test_errors_show_settings_bare_and_the_cli_shows_its_flags():
    """A library error marks the setting it speaks of: str() gives the bare name, the CLI its flag; the marker
    itself never reaches either."""
    from evalchemy.errors import UsageError, cli_words, setting

    err = UsageError(f"{setting('request-timeout')} 0: must be at least 1 (raise {setting('request-timeout')})")
    assert str(err) == "request-timeout 0: must be at least 1 (raise request-timeout)"
    assert cli_words(err.message) == "--request-timeout 0: must be at least 1 (raise --request-timeout)"
    assert cli_words("a message with no setting: --as it was") == "a message with no setting: --as it was"


def test_queue_worker_gives_its_endpoint_only_to_runs_that_reach_a_server(tmp_path):
    """A queued run with no --endpoint gets the worker's; a run of a checkpoint or of the embedded model (by flag or
    by the config's model.backend) gets none, which those backends would refuse."""
    from evalchemy.queue.work import Settings, command

    conf = Settings(store="sqlite:///s.db", output=tmp_path, endpoints=("http://box:8000",))
    plain, in_config = tmp_path / "plain.json", tmp_path / "model.json"
    plain.write_text('{"benchmarks": {}}', encoding="utf-8")
    in_config.write_text('{"benchmarks": {}, "model": {"backend": "hf", "name": "/models/x"}}', encoding="utf-8")

    def endpoints(args, config):
        argv = command({"args": args, "run_id": "r"}, config, conf)
        return [argv[i + 1] for i, a in enumerate(argv) if a == "--endpoint"]

    assert endpoints([], plain) == ["http://box:8000"]
    assert endpoints(["--backend", "chat"], plain) == ["http://box:8000"]
    assert endpoints(["--endpoint", "http://other:8000"], plain) == ["http://other:8000"]
    assert endpoints(["--backend", "hf", "--model", "/models/x"], plain) == []
    assert endpoints(["--backend=local"], plain) == []
    assert endpoints([], in_config) == []
    assert endpoints(["--backend", "vllm-server"], in_config) == ["http://box:8000"]


def test_lm_eval_templates_compile_once_and_render_as_lm_eval_does():
    """The worker's template cache: every string equals lm-eval's own rendering, and a template text is compiled
    once however many documents it renders."""
    from lm_eval import utils

    from evalchemy.engines.lm_eval import templates

    stock = utils.apply_template
    cases = [("{{question.strip()}}\nA. {{A}}\n정답：", {"question": " 보험료 는 ? ", "A": "위험률"}),
             ("{{['A', 'B', 'C', 'D'][gold]}}", {"gold": 2}),
             ("{{text | regex_replace('a+', 'b')}}", {"text": "caaat"}),
             ("{{choices}}", {"choices": ["x", "y"]})]
    expected = [stock(template, doc) for template, doc in cases]
    try:
        templates.install()
        cached = utils.apply_template
        assert cached is not stock and getattr(cached, "evalchemy_cached", False)
        for _ in range(3):
            assert [utils.apply_template(template, doc) for template, doc in cases] == expected
        info = cached.compiled.cache_info()
        assert (info.misses, info.hits) == (len(cases), 2 * len(cases))
        templates.install()  # a second install keeps the first
        assert utils.apply_template is cached
    finally:
        utils.apply_template = stock
