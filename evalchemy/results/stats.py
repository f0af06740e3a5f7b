"""The summary's ``stats`` layer: accuracy with a 95% Wilson interval and n, per benchmark and per subject; the
model's confidence and expected calibration error (multiple choice); the no-answer rate (generation); accuracy by
prompt-length bucket.

Two halves:
- ``sample_stats`` runs in the lm-eval worker on lm-eval's per-sample records and returns a compact, mergeable
  dict per task and filter (counts and sums, no per-question data), sent back in the worker's answer;
- ``benchmark_stats`` runs in the runner: it merges those per subject label and per benchmark and computes the
  published numbers. Without sample stats (an older summary, a worker that sent none) it still gives accuracy, n
  and the Wilson interval from the benchmark's scores and sample counts.

Definitions (also in the README):
- confidence: softmax of the choices' log-likelihoods, probability of the chosen (highest log-likelihood) choice;
- ECE: 10 equal-width confidence bins, sum over bins of (bin size / n) * |accuracy - mean confidence|, with the
  ``acc`` metric as correctness (the choice with the highest raw log-likelihood);
- no answer: a generation whose filtered answer is empty or lm-eval's "[invalid]" (a regex filter that found
  nothing);
- prompt length: characters of the prompt lm-eval sent for the question (its first request's context, few-shot
  examples included); buckets by ``LENGTH_EDGES``. Characters, not tokens: every backend has them, and they compare
  across models with different tokenizers.
"""

from __future__ import annotations

import math

CI_Z = 1.959963984540054  # two-sided 95% normal quantile
ECE_BINS = 10
LENGTH_EDGES = (0, 256, 512, 1024, 2048)  # bucket i: LENGTH_EDGES[i] <= chars < LENGTH_EDGES[i + 1]; last open
NO_ANSWER_TEXTS = ("", "[invalid]")
PROPORTION_METRICS = ("acc", "acc_norm", "exact_match", "em")
METHOD = {
    "interval": "Wilson score interval, 95%",
    "confidence": "softmax of the choices' log-likelihoods, probability of the chosen choice",
    "calibration": f"expected calibration error over {ECE_BINS} equal-width confidence bins (acc as correctness)",
    "no_answer": "generations whose filtered answer is empty or '[invalid]'",
    "prompt_length": "characters of the prompt sent for each question (few-shot examples included)",
}


def wilson_interval(correct: float, n: int, z: float = CI_Z) -> tuple[float, float] | None:
    """The Wilson score interval for ``correct`` successes out of ``n``; None when n is 0."""
    if n <= 0:
        return None
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def length_bucket(chars: int) -> int:
    for i in range(len(LENGTH_EDGES) - 1, -1, -1):
        if chars >= LENGTH_EDGES[i]:
            return i
    return 0


def length_label(i: int) -> str:
    lo = LENGTH_EDGES[i]
    return f"{lo}+" if i == len(LENGTH_EDGES) - 1 else f"{lo}-{LENGTH_EDGES[i + 1] - 1}"


def confidence_bin(confidence: float) -> int:
    return min(ECE_BINS - 1, max(0, int(confidence * ECE_BINS)))


# --------------------------------------------------------------------------------------------------------------
# In the worker: lm-eval's samples -> compact counts


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    try:  # numpy scalars
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _prompt_chars(sample: dict) -> int:
    arguments = sample.get("arguments") or []
    first = arguments[0] if arguments else None
    if isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, dict):  # the serialised shape {"arg_0": context, ...}
        first = first.get("arg_0")
    return len(first) if isinstance(first, str) else 0


def _choice_confidence(sample: dict) -> float | None:
    """Probability of the highest-log-likelihood choice under a softmax over the choices' log-likelihoods."""
    values = []
    for resp in sample.get("filtered_resps") or []:
        ll = resp[0] if isinstance(resp, (list, tuple)) and resp else resp
        ll = _number(ll)
        if ll is None:
            return None
        values.append(ll)
    if len(values) < 2:
        return None
    top = max(values)
    return 1.0 / sum(math.exp(v - top) for v in values)


def _answer_text(sample: dict) -> str | None:
    resps = sample.get("filtered_resps") or []
    first = resps[0] if resps else None
    if isinstance(first, (list, tuple)):
        first = first[0] if first else ""
    return first if isinstance(first, str) else None


def _empty(output_type: str | None) -> dict:
    return {"output_type": output_type, "n": 0, "sums": {}, "binary": {},
            "confidence": {"n": 0, "sum": 0.0, "bins": [[0, 0.0, 0.0] for _ in range(ECE_BINS)]}
            if output_type == "multiple_choice" else None,
            "no_answer": 0 if output_type == "generate_until" else None,
            "length": [{"n": 0, "sums": {}} for _ in LENGTH_EDGES]}


def sample_stats(samples: dict | None, configs: dict | None) -> dict:
    """``{task: {filter: counts}}`` from lm-eval's ``samples`` (``simple_evaluate(log_samples=True)``)."""
    out: dict[str, dict] = {}
    for task, rows in (samples or {}).items():
        output_type = ((configs or {}).get(task) or {}).get("output_type")
        per_filter: dict[str, dict] = {}
        for sample in rows or []:
            flt = sample.get("filter") or "none"
            counts = per_filter.setdefault(flt, _empty(output_type))
            counts["n"] += 1
            bucket = counts["length"][length_bucket(_prompt_chars(sample))]
            bucket["n"] += 1
            for metric in sample.get("metrics") or []:
                value = _number(sample.get(metric))
                if value is None:
                    continue
                counts["sums"][metric] = counts["sums"].get(metric, 0.0) + value
                counts["binary"][metric] = counts["binary"].get(metric, True) and value in (0.0, 1.0)
                bucket["sums"][metric] = bucket["sums"].get(metric, 0.0) + value
            if counts["confidence"] is not None:
                confidence = _choice_confidence(sample)
                correct = _number(sample.get("acc"))
                if confidence is not None and correct is not None:
                    conf = counts["confidence"]
                    conf["n"] += 1
                    conf["sum"] += confidence
                    cell = conf["bins"][confidence_bin(confidence)]
                    cell[0] += 1
                    cell[1] += confidence
                    cell[2] += correct
            if counts["no_answer"] is not None:
                text = _answer_text(sample)
                if text is None or text.strip() in NO_ANSWER_TEXTS:
                    counts["no_answer"] += 1
        if per_filter:
            out[task] = per_filter
    return out


# --------------------------------------------------------------------------------------------------------------
# In the runner: merge per subject and benchmark, compute the published numbers


def _merge(into: dict | None, part: dict) -> dict:
    if into is None:
        into = _empty(part.get("output_type"))
        into["confidence"] = _empty("multiple_choice")["confidence"] if part.get("confidence") else None
        into["no_answer"] = 0 if part.get("no_answer") is not None else None
    into["n"] += part["n"]
    for metric, value in part["sums"].items():
        into["sums"][metric] = into["sums"].get(metric, 0.0) + value
    for metric, flag in part["binary"].items():
        into["binary"][metric] = into["binary"].get(metric, True) and flag
    if into["confidence"] is not None and part.get("confidence"):
        conf, other = into["confidence"], part["confidence"]
        conf["n"] += other["n"]
        conf["sum"] += other["sum"]
        for cell, add in zip(conf["bins"], other["bins"]):
            for i in range(3):
                cell[i] += add[i]
    if into["no_answer"] is not None and part.get("no_answer") is not None:
        into["no_answer"] += part["no_answer"]
    for bucket, add in zip(into["length"], part["length"]):
        bucket["n"] += add["n"]
        for metric, value in add["sums"].items():
            bucket["sums"][metric] = bucket["sums"].get(metric, 0.0) + value
    return into


def calibration(conf: dict | None) -> dict | None:
    """Mean confidence, ECE and the reliability diagram's bins from merged confidence counts."""
    if not conf or not conf["n"]:
        return None
    n = conf["n"]
    bins, ece = [], 0.0
    for i, (count, conf_sum, correct_sum) in enumerate(conf["bins"]):
        entry = {"lower": i / ECE_BINS, "upper": (i + 1) / ECE_BINS, "n": count,
                 "confidence": conf_sum / count if count else None, "accuracy": correct_sum / count if count else None}
        if count:
            ece += count / n * abs(entry["accuracy"] - entry["confidence"])
        bins.append(entry)
    return {"n": n, "mean": conf["sum"] / n, "ece": ece, "bins": bins}


def _numbers(metric: str | None, accuracy: float | None, n: int | None, merged: dict | None) -> dict:
    """accuracy, n, correct and ci95 for one subject or benchmark."""
    correct = None
    binary = metric in PROPORTION_METRICS
    if merged and metric in merged["sums"] and merged["n"]:
        n = merged["n"]
        correct = merged["sums"][metric]
        accuracy = correct / n
        binary = merged["binary"].get(metric, False)
    elif accuracy is not None and n and binary:
        correct = round(accuracy * n)
    interval = wilson_interval(correct, n) if binary and correct is not None and n else None
    return {"metric": metric, "accuracy": accuracy, "n": n,
            "correct": round(correct) if binary and correct is not None else None,
            "ci95": [interval[0], interval[1]] if interval else None}


def _extras(metric: str | None, merged: dict | None, with_bins: bool) -> dict:
    if merged is None:
        return {"confidence": None, "no_answer": None, "prompt_length": None}
    conf = calibration(merged["confidence"])
    if conf is not None and not with_bins:
        conf = {k: conf[k] for k in ("n", "mean", "ece")}
    no_answer = None
    if merged["no_answer"] is not None and merged["n"]:
        no_answer = {"n": merged["no_answer"], "rate": merged["no_answer"] / merged["n"]}
    buckets = []
    for i, bucket in enumerate(merged["length"]):
        if not bucket["n"]:
            continue
        value = bucket["sums"].get(metric) if metric else None
        buckets.append({"bucket": length_label(i), "n": bucket["n"],
                        "accuracy": value / bucket["n"] if value is not None else None})
    return {"confidence": conf, "no_answer": no_answer, "prompt_length": buckets or None}


def _task_counts(outcome_stats: dict, task: str, label: str | None) -> dict | None:
    """The counts of the filter the task's primary metric was read from (``exact_match,strip`` -> ``strip``)."""
    per_filter = outcome_stats.get(task) or {}
    flt = label.split(",", 1)[1] if label and "," in label else "none"
    return per_filter.get(flt) or (next(iter(per_filter.values())) if len(per_filter) == 1 else None)


def benchmark_stats(outcomes: list, scores: dict) -> dict | None:
    """The stats entry of one benchmark from its invocations (RunOutcome with ``.stats``) and
    ``scores.benchmark_scores``'s result; None when it has no accuracy."""
    from evalchemy.engines.lm_eval import scores as collect

    if scores.get("accuracy") is None:
        return None
    metric = scores.get("primary_metric")
    per_subject: dict[str, dict] = {}
    total: dict | None = None
    complete = True
    for outcome in outcomes:
        if outcome.status != "success" or not outcome.results:
            continue
        leaves = collect.leaf_tasks(outcome.results)
        for task in leaves:
            label_metric = collect.primary_metric(scores["metrics"].get(task, {}), outcome.run.metrics)
            if label_metric is None:
                continue
            subject = outcome.run.label if len(leaves) == 1 else task
            counts = _task_counts(getattr(outcome, "stats", None) or {}, task, label_metric)
            if counts is None:
                complete = False
                continue
            per_subject[subject] = _merge(per_subject.get(subject), counts)
            total = _merge(total, counts)
    if not complete:
        per_subject, total = {}, None
    subjects = scores.get("subject_accuracy") or {}
    n_total = sum((scores.get("n_samples") or {}).get(t, 0) for o in outcomes if o.status == "success"
                  and o.results for t in collect.leaf_tasks(o.results))
    entry = {**_numbers(metric, scores["accuracy"], n_total or None, total), **_extras(metric, total, True)}
    if len(subjects) > 1:
        n_by_subject = _subject_sizes(outcomes, scores)
        entry["subjects"] = {
            name: {**_numbers(metric, value, n_by_subject.get(name), per_subject.get(name)),
                   **_extras(metric, per_subject.get(name), False)}
            for name, value in subjects.items()
        }
    return entry


def _subject_sizes(outcomes: list, scores: dict) -> dict[str, int]:
    from evalchemy.engines.lm_eval import scores as collect

    sizes: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status != "success" or not outcome.results:
            continue
        leaves = collect.leaf_tasks(outcome.results)
        for task in leaves:
            subject = outcome.run.label if len(leaves) == 1 else task
            sizes[subject] = sizes.get(subject, 0) + (scores.get("n_samples") or {}).get(task, 0)
    return sizes


def stats_from_summary_entry(bench: dict, accuracy: float | None, subject_accuracy: dict | None) -> dict | None:
    """A stats entry for a benchmark of a summary without one (schema version 1): accuracy, n and the Wilson
    interval from its scores and sample counts; no confidence, no-answer or length figures."""
    if accuracy is None:
        return None
    metric = bench.get("primary_metric")
    counts = bench.get("n_samples") or {}
    subjects = subject_accuracy or {}
    entry = {**_numbers(metric, accuracy, sum(counts.values()) or None, None), **_extras(metric, None, True)}
    if len(subjects) > 1:
        entry["subjects"] = {}
        for name, value in subjects.items():
            n = counts.get(name)
            if n is None:  # a single-task entry's label: the n of the task whose label it is
                n = next((counts.get(t) for r in bench.get("runs") or [] if r.get("label") == name
                          for t in r.get("tasks") or [] if t in counts), None)
            entry["subjects"][name] = {**_numbers(metric, value, n, None), **_extras(metric, None, False)}
    return entry
