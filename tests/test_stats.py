"""The summary's stats layer, checked against arithmetic done here on answers the test server was rigged to give."""

from __future__ import annotations

import json
import math

import pytest
from jsonschema import Draft202012Validator
from scipy.stats import norm

from evalchemy.config.model import load_schema
from evalchemy.testing.server import TestServer
from tests import statsdata


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run against the rigged server: sure (confidences), kmmlu_domain (Korean subjects), parse (no answers)."""
    folder = tmp_path_factory.mktemp("stats")
    assets = statsdata.write_tasks(folder)
    config = folder / "eval_config.json"
    config.write_text(json.dumps(statsdata.config(), ensure_ascii=False), encoding="utf-8")
    with TestServer(assets["tokenizer"], "test-model", answers=statsdata.server_answers()) as srv:
        done = statsdata.run(srv, assets, config, folder / "o", "stats")
    assert done.returncode == 4, done.stderr  # the benchmark "broken" fails
    summary = json.loads((folder / "o" / "stats" / "evalchemy_summary_stats.json").read_text(encoding="utf-8"))
    return {"summary": summary, "run_dir": folder / "o" / "stats", "assets": assets, "port": srv.port}


def wilson_by_root(k: int, n: int) -> tuple[float, float]:
    """The interval's ends as the roots of (k/n - p)^2 = z^2 p (1 - p) / n, z the 97.5% normal quantile."""
    z, phat = norm.ppf(0.975), k / n
    a, b, c = 1 + z * z / n, -(2 * phat + z * z / n), phat * phat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


def ece_by_loop(outcomes: list[tuple[float, bool]]) -> float:
    total = 0.0
    for lower in range(10):
        inside = [(c, ok) for c, ok in outcomes if lower / 10 <= c < (lower + 1) / 10 or (lower == 9 and c == 1.0)]
        if inside:
            accuracy = sum(ok for _, ok in inside) / len(inside)
            confidence = sum(c for c, _ in inside) / len(inside)
            total += len(inside) / len(outcomes) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("k, n", [(0, 7), (7, 7), (1, 1), (3, 10), (500, 1000)])
def test_wilson_interval_at_the_edges(k, n):
    """Zero and all correct included: the interval equals the quadratic's roots, clipped to [0, 1]."""
    from evalchemy.results.stats import wilson_interval

    lo, hi = wilson_by_root(k, n)
    assert wilson_interval(k, n) == pytest.approx((max(0.0, lo), min(1.0, hi)), abs=1e-12)
    assert wilson_interval(0, 0) is None


def test_summary_is_version_2_and_valid(run):
    """The summary carries schema_version 2 and validates, stats layer included."""
    summary = run["summary"]
    assert summary["schema_version"] == 2
    Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
    assert set(summary["stats"]["benchmark"]) == {"sure", "kmmlu_domain", "parse"}  # not the failed one
    assert summary["stats"]["method"]["interval"] == "Wilson score interval, 95%"


def test_accuracy_n_and_wilson_interval_per_benchmark_and_subject(run):
    """accuracy, n, correct and the 95% Wilson interval equal the ones recomputed from the rigged answers."""
    stats = run["summary"]["stats"]["benchmark"]
    sure = statsdata.mc_outcomes(statsdata.SURE)
    k = sum(ok for _, ok in sure)
    assert (stats["sure"]["n"], stats["sure"]["correct"], stats["sure"]["metric"]) == (len(sure), k, "acc")
    assert stats["sure"]["accuracy"] == pytest.approx(k / len(sure))
    assert stats["sure"]["ci95"] == pytest.approx(wilson_by_root(k, len(sure)), abs=1e-12)

    ins, fin = statsdata.mc_outcomes(statsdata.korean_rows("insurance")), statsdata.mc_outcomes(
        statsdata.korean_rows("finance"))
    kmmlu = stats["kmmlu_domain"]
    for label, outcomes in (("보험학", ins), ("금융", fin)):
        k = sum(ok for _, ok in outcomes)
        subject = kmmlu["subjects"][label]
        assert (subject["n"], subject["correct"]) == (len(outcomes), k)
        assert subject["ci95"] == pytest.approx(wilson_by_root(k, len(outcomes)), abs=1e-12)
    k, n = sum(ok for _, ok in ins + fin), len(ins + fin)
    assert (kmmlu["n"], kmmlu["correct"]) == (n, k)
    assert kmmlu["ci95"] == pytest.approx(wilson_by_root(k, n), abs=1e-12)
    assert run["summary"]["breakdown"]["benchmark"]["kmmlu_domain_accuracy"] == pytest.approx(k / n)


def test_confidence_and_calibration_error(run):
    """Mean confidence, ECE (10 equal-width bins) and the reliability bins equal the ones from the rigged
    log-likelihoods, per benchmark and per subject."""
    stats = run["summary"]["stats"]["benchmark"]
    sure = statsdata.mc_outcomes(statsdata.SURE)
    assert len({round(c, 6) for c, _ in sure}) == 5  # the rig gives five different confidences
    conf = stats["sure"]["confidence"]
    assert conf["n"] == len(sure)
    assert conf["mean"] == pytest.approx(sum(c for c, _ in sure) / len(sure), abs=1e-9)
    assert conf["ece"] == pytest.approx(ece_by_loop(sure), abs=1e-9)
    assert [b["n"] for b in conf["bins"]] == [sum(1 for c, _ in sure if int(c * 10) == i) for i in range(10)]
    ins = statsdata.mc_outcomes(statsdata.korean_rows("insurance"))
    subject = stats["kmmlu_domain"]["subjects"]["보험학"]["confidence"]
    assert subject["ece"] == pytest.approx(ece_by_loop(ins), abs=1e-9)
    assert "bins" not in subject
    assert stats["parse"]["confidence"] is None


def test_no_answer_rate_and_prompt_length_buckets(run):
    """Generation answers the regex filter cannot parse count as no answer; every question falls in a
    prompt-length bucket whose accuracy is the share correct in it."""
    stats = run["summary"]["stats"]["benchmark"]
    parse = statsdata.parse_outcomes()
    missing = sum(no for no, _ in parse)
    assert missing == 2  # "no idea" and the default "I do not know"
    assert stats["parse"]["no_answer"] == {"n": missing, "rate": missing / len(parse)}
    assert stats["parse"]["metric"] == "exact_match"
    assert stats["parse"]["correct"] == sum(ok for _, ok in parse)
    assert stats["sure"]["no_answer"] is None
    sure = statsdata.mc_outcomes(statsdata.SURE)
    lengths = [len(statsdata.sure_prompt(q)) for q, _, _ in statsdata.SURE]
    short = [ok for (_, ok), chars in zip(sure, lengths) if chars < 256]
    long = [ok for (_, ok), chars in zip(sure, lengths) if 256 <= chars < 512]
    assert (len(short), len(long)) == (5, 1)
    assert stats["sure"]["prompt_length"] == [
        {"bucket": "0-255", "n": 5, "accuracy": pytest.approx(sum(short) / 5)},
        {"bucket": "256-511", "n": 1, "accuracy": sum(long) / 1}]


def test_breakdown_benchmark_is_unchanged_by_the_stats_layer(run):
    """breakdown.benchmark keeps its version 1 keys only."""
    assert set(run["summary"]["breakdown"]["benchmark"]) == {
        "sure_accuracy", "kmmlu_domain_accuracy", "kmmlu_domain_subject_accuracy", "parse_accuracy"}


def test_resume_from_a_version_1_summary_keeps_benchmarks_and_fills_their_stats(run, tmp_path):
    """A run id whose earlier summary is version 1 (no stats) resumes: kept benchmarks get accuracy, n and the
    Wilson interval from the old scores."""
    import shutil

    from evalchemy.results.stats import stats_from_summary_entry

    old = json.loads(json.dumps(run["summary"]))
    old["schema_version"] = 1
    del old["stats"]
    bench = old["benchmarks"]["kmmlu_domain"]
    entry = stats_from_summary_entry(bench, old["breakdown"]["benchmark"]["kmmlu_domain_accuracy"],
                                     old["breakdown"]["benchmark"]["kmmlu_domain_subject_accuracy"])
    new = run["summary"]["stats"]["benchmark"]["kmmlu_domain"]
    assert (entry["n"], entry["correct"], entry["ci95"]) == (new["n"], new["correct"], pytest.approx(new["ci95"]))
    assert {k: (v["n"], v["correct"]) for k, v in entry["subjects"].items()} == {
        k: (v["n"], v["correct"]) for k, v in new["subjects"].items()}
    assert entry["confidence"] is None

    run_dir = tmp_path / "o" / "stats"
    shutil.copytree(run["run_dir"], run_dir)
    (run_dir / "evalchemy_summary_stats.json").write_text(json.dumps(old, ensure_ascii=False), encoding="utf-8")
    for lock in run_dir.parent.glob(".*lock*"):
        lock.unlink()
    assets = run["assets"]
    config = tmp_path / "eval_config.json"
    config.write_text(json.dumps(statsdata.config(), ensure_ascii=False), encoding="utf-8")
    with TestServer(assets["tokenizer"], "test-model", port=run["port"], answers=statsdata.server_answers()) as srv:
        done = statsdata.run(srv, assets, config, tmp_path / "o", "stats")
    assert done.returncode == 4, done.stderr
    summary = json.loads((run_dir / "evalchemy_summary_stats.json").read_text(encoding="utf-8"))
    assert summary["schema_version"] == 2
    assert summary["benchmarks"]["kmmlu_domain"]["resumed"] is True
    kept = summary["stats"]["benchmark"]["kmmlu_domain"]
    assert (kept["n"], kept["correct"], kept["confidence"]) == (new["n"], new["correct"], None)
