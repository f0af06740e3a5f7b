"""Comparing two runs: per benchmark and per subject label, both scores, the difference, and whether it is beyond
noise.

- Paired (``mcnemar``): when both runs scored the same questions (same task, doc id and doc hash) with a 0/1
  metric, an exact McNemar test on the discordant pairs (two-sided binomial, p = 0.5): ``fixed`` questions went
  from wrong to right, ``broken`` from right to wrong.
- Otherwise (``unpaired``): a two-sided z test on the difference from both scores' standard errors.
- Holm's step-down correction over every tested row of the comparison; a row is ``beyond_noise`` when its
  corrected p-value is below ``alpha``.
- ``higher_is_better`` (from lm-eval) says which direction is worse; a ``regression`` is a change for the worse
  beyond noise by more than ``threshold`` points (100 x the metric's units: accuracy points).
- Rows whose comparability keys differ (task config, num_fewshot, limit, lm-eval version, data) are kept but
  marked ``comparable: false`` and never tested: they are different measurements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from evalchemy.store.queries import RunData, combined_stderr

KEY_FIELDS = ("task_config_sha256", "num_fewshot", "sample_limit", "lm_eval_version", "data_sha256")
KEY_NAMES = {"task_config_sha256": "task config", "num_fewshot": "num_fewshot", "sample_limit": "limit",
             "lm_eval_version": "lm-eval version", "data_sha256": "data"}


@dataclass
class Row:
    benchmark: str
    subject: str | None
    metric: str | None
    a: float | None
    b: float | None
    delta: float | None
    n: int | None
    method: str | None  # "mcnemar", "unpaired", or None when not tested
    p_value: float | None
    p_adjusted: float | None = None
    fixed: int | None = None
    broken: int | None = None
    higher_is_better: bool = True
    comparable: bool = True
    beyond_noise: bool = False
    regression: bool = False
    note: str | None = None


@dataclass
class Flip:
    benchmark: str
    subject: str | None
    task: str
    doc_id: str
    change: str  # "broken" (right -> wrong) or "fixed"
    target: str | None
    prediction_a: str | None
    prediction_b: str | None


@dataclass
class Comparison:
    a: str
    b: str
    alpha: float
    threshold: float
    rows: list[Row] = field(default_factory=list)
    flips: list[Flip] = field(default_factory=list)
    backends: dict[str, str | None] = field(default_factory=dict)  # "a"/"b" -> the backend each run used

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    def to_json(self, flips: int | None = None) -> dict:
        return {"a": self.a, "b": self.b, "backends": self.backends, "alpha": self.alpha,
                "threshold_points": self.threshold,
                "rows": [asdict(r) for r in self.rows],
                "flips": [asdict(f) for f in (self.flips if flips is None else self.flips[:flips])],
                "flips_total": len(self.flips)}


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value: binomial test of min(fixed, broken) among the discordant pairs."""
    from scipy.stats import binomtest

    n = fixed + broken
    if n == 0:
        return 1.0
    return float(min(1.0, binomtest(min(fixed, broken), n, 0.5).pvalue))


def unpaired_p(a: float, b: float, stderr_a: float | None, stderr_b: float | None) -> float | None:
    if stderr_a is None or stderr_b is None:
        return None
    spread = math.sqrt(stderr_a ** 2 + stderr_b ** 2)
    if spread == 0:
        return 1.0 if a == b else None
    return math.erfc(abs(b - a) / spread / math.sqrt(2))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def _key(score: dict) -> tuple:
    return tuple(score.get(f) for f in KEY_FIELDS)


def _key_difference(a: dict, b: dict) -> str:
    parts = []
    for name in KEY_FIELDS:
        if a.get(name) != b.get(name):
            shown = name in ("num_fewshot", "sample_limit", "lm_eval_version")
            parts.append(f"{KEY_NAMES[name]} {a.get(name)!r} != {b.get(name)!r}" if shown
                         else f"{KEY_NAMES[name]} differs")
    return ", ".join(parts)


def _pairs(a: list[dict], b: list[dict]) -> list[tuple[dict, dict]] | None:
    """The same questions in both runs with a 0/1 outcome each, or None when they cannot be paired."""
    if not a or not b:
        return None
    left = {(s["task"], s["doc_id"]): s for s in a}
    right = {(s["task"], s["doc_id"]): s for s in b}
    if set(left) != set(right):
        return None
    pairs = []
    for key, one in left.items():
        other = right[key]
        if one["doc_hash"] != other["doc_hash"] or one["correct"] not in (0, 1) or other["correct"] not in (0, 1):
            return None
        pairs.append((one, other))
    return pairs


def _row(benchmark: str, subject: str | None, metric: str | None, value_a, value_b, stderr_a, stderr_b,
         samples_a: list[dict], samples_b: list[dict], higher: bool, n: int | None,
         flips: list[Flip]) -> Row:
    row = Row(benchmark=benchmark, subject=subject, metric=metric, a=value_a, b=value_b,
              delta=None if value_a is None or value_b is None else round(value_b - value_a, 12), n=n, method=None,
              p_value=None, higher_is_better=higher)
    if row.delta is None:
        row.note = "no score in " + ("both runs" if value_a is None and value_b is None
                                     else "run A" if value_a is None else "run B")
        return row
    pairs = _pairs(samples_a, samples_b)
    if pairs is not None:
        fixed = [(x, y) for x, y in pairs if x["correct"] == 0 and y["correct"] == 1]
        broken = [(x, y) for x, y in pairs if x["correct"] == 1 and y["correct"] == 0]
        row.method, row.n, row.fixed, row.broken = "mcnemar", len(pairs), len(fixed), len(broken)
        row.p_value = mcnemar_p(len(fixed), len(broken))
        if subject is None:
            for change, items in (("broken", broken), ("fixed", fixed)):
                for x, y in sorted(items, key=lambda p: (p[0]["task"], _doc_order(p[0]["doc_id"]))):
                    flips.append(Flip(benchmark, x["subject"], x["task"], x["doc_id"], change, x["target"],
                                      x["prediction"], y["prediction"]))
        return row
    row.method = "unpaired"
    row.p_value = unpaired_p(value_a, value_b, stderr_a, stderr_b)
    if row.p_value is None:
        row.method, row.note = None, "no standard error and no per-question scores: not tested"
    return row


def _doc_order(doc_id: str):
    return (0, int(doc_id), "") if doc_id.isdigit() else (1, 0, doc_id)


def compare(a: RunData, b: RunData, alpha: float = 0.05, threshold: float = 0.0) -> Comparison:
    result = Comparison(a=a.run_id, b=b.run_id, alpha=alpha, threshold=threshold,
                        backends={"a": a.backend, "b": b.backend})
    for name in sorted(set(a.benchmarks) | set(b.benchmarks)):
        bench_a, bench_b = a.benchmarks.get(name) or {}, b.benchmarks.get(name) or {}
        subjects_a = {s["subject"]: s for s in a.subjects if s["benchmark"] == name}
        subjects_b = {s["subject"]: s for s in b.subjects if s["benchmark"] == name}
        primary_a = {(s["task"], s["metric"]) for s in subjects_a.values()}
        primary_b = {(s["task"], s["metric"]) for s in subjects_b.values()}
        scores_a = {(s["task"], s["metric"]): s for s in a.scores if s["benchmark"] == name}
        scores_b = {(s["task"], s["metric"]): s for s in b.scores if s["benchmark"] == name}
        higher = all(scores_a.get(k, {}).get("higher_is_better") is not False for k in primary_a | primary_b)
        notes = []
        for key in sorted(primary_a | primary_b):
            if key not in scores_a or key not in scores_b:
                notes.append(f"{key[0]} {key[1]} scored in one run only")
            elif _key(scores_a[key]) != _key(scores_b[key]):
                notes.append(f"{key[0]}: {_key_difference(scores_a[key], scores_b[key])}")
        ok = lambda bench: bench.get("status") == "success"  # noqa: E731
        value_a = bench_a.get("value") if ok(bench_a) else None
        value_b = bench_b.get("value") if ok(bench_b) else None
        samples_a = [s for s in a.samples if s["benchmark"] == name]
        samples_b = [s for s in b.samples if s["benchmark"] == name]
        rows = [(None, bench_a.get("metric") or bench_b.get("metric"), value_a, value_b,
                 combined_stderr([(s["n"], s["stderr"]) for s in subjects_a.values()]),
                 combined_stderr([(s["n"], s["stderr"]) for s in subjects_b.values()]),
                 samples_a, samples_b, bench_b.get("n") or bench_a.get("n"))]
        labels = sorted(set(subjects_a) | set(subjects_b))
        if len(labels) > 1:
            for label in labels:
                sa_, sb_ = subjects_a.get(label) or {}, subjects_b.get(label) or {}
                rows.append((label, sa_.get("metric") or sb_.get("metric"),
                             sa_.get("value") if value_a is not None else None,
                             sb_.get("value") if value_b is not None else None, sa_.get("stderr"), sb_.get("stderr"),
                             [s for s in samples_a if s["subject"] == label],
                             [s for s in samples_b if s["subject"] == label], sb_.get("n") or sa_.get("n")))
        for subject, metric, va, vb, ea, eb, xa, xb, n in rows:
            row = _row(name, subject, metric, va, vb, ea, eb, xa, xb, higher, n, result.flips)
            if notes:
                row.comparable, row.method, row.p_value, row.fixed, row.broken = False, None, None, None, None
                row.note = "not the same measurement: " + "; ".join(notes)
            result.rows.append(row)
    tested = [r for r in result.rows if r.p_value is not None]
    for row, adjusted in zip(tested, holm([r.p_value for r in tested])):
        row.p_adjusted = adjusted
        row.beyond_noise = adjusted < alpha
        worse = row.delta < 0 if row.higher_is_better else row.delta > 0
        row.regression = row.beyond_noise and worse and abs(row.delta) * 100 > threshold
    if any(not r.comparable for r in result.rows):
        bad = {r.benchmark for r in result.rows if not r.comparable}
        result.flips = [f for f in result.flips if f.benchmark not in bad]
    return result
