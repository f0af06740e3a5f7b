"""Comparison and leaderboard pages (HTML and Markdown) from the plain rows ``compare --json`` and
``leaderboard --json`` print (issue 12's shapes), so the store's commands only hand their rows over:

- comparison: ``{"a": RUN_A, "b": RUN_B, "rows": [{benchmark, subject (None for the benchmark row), metric, a, b,
  delta, n, method, p_value, fixed, broken, beyond_noise, regression, ...}]}``, plus optional ``flips``:
  ``[{benchmark, subject, task, doc_id, question, expected, a_answer, b_answer, change: "fixed" | "broken"}]``;
- leaderboard: ``{"rows": [{model, benchmark, subject, metric, value, stderr, n, run_id, finished_at}]}``.

Same look as the run report: one file, inline CSS and SVG, no network. The leaderboard's tables sort by a click on a
column header: one small inline script, allowed by its SHA-256 in the page's Content-Security-Policy (nothing else
may run)."""

from __future__ import annotations

import math
from pathlib import Path

from evalchemy.reports.charts import Bar, BarChart
from evalchemy.reports.render import CSP, csp_with_script, pct, render, write_text_atomic

Z95 = 1.959963984540054
MAX_FLIPS = 50

SORT_SCRIPT = """document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var down = th.getAttribute('aria-sort') !== 'descending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', down ? 'descending' : 'ascending');
      rows.sort(function (x, y) {
        var a = x.cells[col].getAttribute('data-sort'), b = y.cells[col].getAttribute('data-sort');
        var na = parseFloat(a), nb = parseFloat(b), r;
        if (a === '' || a === null) { return 1; } if (b === '' || b === null) { return -1; }
        r = (!isNaN(na) && !isNaN(nb)) ? na - nb : String(a).localeCompare(String(b), 'ko');
        return down ? -r : r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});"""


def noise_band(row: dict) -> tuple[float, float] | None:
    """A 95% band for the difference: the row's own (``delta_ci95``) when it has one, else the normal
    approximation for two independent proportions, +/- 1.96 * sqrt(a(1-a)/n + b(1-b)/n)."""
    if row.get("delta_ci95"):
        lo, hi = row["delta_ci95"]
        return float(lo), float(hi)
    a, b, n = row.get("a"), row.get("b"), row.get("n")
    if a is None or b is None or not n or not (0 <= a <= 1 and 0 <= b <= 1):
        return None
    half = Z95 * math.sqrt(a * (1 - a) / n + b * (1 - b) / n)
    delta = row["delta"] if row.get("delta") is not None else b - a
    return delta - half, delta + half


def _delta_bar(label: str, row: dict) -> Bar:
    delta = row.get("delta")
    if delta is None and row.get("a") is not None and row.get("b") is not None:
        delta = row["b"] - row["a"]
    band = noise_band(row) or (None, None)
    kind = "" if not row.get("beyond_noise") else ("delta-up" if (delta or 0) > 0 else "delta-down")
    note = "–" if delta is None else f"{delta * 100:+.1f} pts" + (" *" if row.get("beyond_noise") else "")
    return Bar(label=label, value=delta, lo=band[0], hi=band[1], note=note, kind=kind)


def compare_view(data: dict, flips: list[dict] | None = None, max_flips: int = MAX_FLIPS) -> dict:
    rows = [dict(r, band=noise_band(r)) for r in data.get("rows") or []]
    benchmarks = [r for r in rows if r.get("subject") is None]
    charts = []
    if benchmarks:
        charts.append(("compare-benchmarks", BarChart(title="Difference per benchmark (B - A), 95% noise band",
                                                      bars=[_delta_bar(r["benchmark"], r) for r in benchmarks],
                                                      signed=True)))
    for bench in dict.fromkeys(r["benchmark"] for r in rows if r.get("subject") is not None):
        subjects = [r for r in rows if r["benchmark"] == bench and r.get("subject") is not None]
        charts.append((f"compare-{bench}", BarChart(title=f"{bench}: difference per subject (B - A)",
                                                    bars=[_delta_bar(r["subject"], r) for r in subjects],
                                                    signed=True)))
    flips = list(flips or [])
    return {"title": f"evalchemy comparison: {data.get('a')} → {data.get('b')}", "a": data.get("a"),
            "b": data.get("b"), "rows": rows, "chart_list": charts, "flips": flips[:max_flips],
            "flips_total": len(flips), "regressions": sum(1 for r in rows if r.get("regression")),
            "csp": CSP, "lang": _lang(rows)}


def _lang(rows: list[dict]) -> str:
    text = "".join(str(r.get("subject") or "") + str(r.get("benchmark") or "") for r in rows)
    return "ko" if any("\uac00" <= ch <= "\ud7a3" for ch in text) else "en"


def leaderboard_view(data: dict) -> dict:
    rows = list(data.get("rows") or [])
    models = list(dict.fromkeys(r["model"] for r in rows))
    columns = list(dict.fromkeys((r["benchmark"], r.get("subject")) for r in rows))
    bench_cols = [c for c in columns if c[1] is None]
    subject_cols = [c for c in columns if c[1] is not None]
    cell = {(r["model"], r["benchmark"], r.get("subject")): r for r in rows}

    def table(cols):
        out = []
        for model in models:
            cells = [cell.get((model, b, s)) for b, s in cols]
            values = [c["value"] for c in cells if c and c.get("value") is not None]
            out.append({"model": model, "cells": cells,
                        "mean": sum(values) / len(values) if len(values) == len(cols) and values else None})
        return sorted(out, key=lambda r: (r["mean"] is None, -(r["mean"] or 0), r["model"]))

    charts = []
    for bench, subject in bench_cols + subject_cols:
        label = bench if subject is None else f"{bench} · {subject}"
        bars = []
        for model in models:
            r = cell.get((model, bench, subject))
            if r is None:
                continue
            stderr = r.get("stderr")
            lo_hi = (r["value"] - Z95 * stderr, r["value"] + Z95 * stderr) if stderr and r.get("value") is not None \
                else (None, None)
            note = pct(r.get("value")) + (f" (n={r['n']})" if r.get("n") else "")
            bars.append(Bar(label=model, value=r.get("value"), lo=lo_hi[0], hi=lo_hi[1], note=note))
        charts.append((f"leader-{len(charts)}", BarChart(title=f"{label}: {_metric(rows, bench, subject)}",
                                                         bars=bars)))
    return {"title": "evalchemy leaderboard", "models": models,
            "benchmark_columns": bench_cols, "subject_columns": subject_cols,
            "benchmark_table": table(bench_cols) if bench_cols else [],
            "subject_table": table(subject_cols) if subject_cols else [],
            "chart_list": charts, "rows": rows, "csp": csp_with_script(SORT_SCRIPT), "script": SORT_SCRIPT,
            "lang": _lang(rows)}


def _metric(rows: list[dict], bench: str, subject) -> str:
    return next((r.get("metric") or "score" for r in rows if r["benchmark"] == bench and r.get("subject") == subject),
                "score")


def compare_html(data: dict, flips: list[dict] | None = None, max_flips: int = MAX_FLIPS) -> str:
    return render("compare.html.j2", **compare_view(data, flips, max_flips))


def compare_markdown(data: dict, flips: list[dict] | None = None, max_flips: int = MAX_FLIPS) -> str:
    return render("compare.md.j2", **compare_view(data, flips, max_flips))


def leaderboard_html(data: dict) -> str:
    return render("leaderboard.html.j2", **leaderboard_view(data))


def leaderboard_markdown(data: dict) -> str:
    return render("leaderboard.md.j2", **leaderboard_view(data))


def write_page(path: Path, text: str) -> Path:
    """Write a page atomically (for ``--html FILE``)."""
    write_text_atomic(Path(path), text)
    return Path(path)
