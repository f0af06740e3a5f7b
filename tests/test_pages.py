"""Comparison and leaderboard pages rendered from rigged rows (the shapes `compare --json` and `leaderboard --json`
print), checked as Markdown and in chromium: numbers, charts, Korean labels, sorting, no network."""

from __future__ import annotations

import math

import pytest

from evalchemy.reports import pages
from tests.browser import assert_offline, chart_bars, open_page, screenshot

COMPARE = {
    "a": "night_1", "b": "night_2",
    "rows": [
        {"benchmark": "kmmlu", "subject": None, "metric": "acc", "a": 0.70, "b": 0.64, "delta": -0.06, "n": 400,
         "method": "mcnemar", "p_value": 0.0021, "fixed": 4, "broken": 28, "beyond_noise": True, "regression": True},
        {"benchmark": "kmmlu", "subject": "보험학", "metric": "acc", "a": 0.80, "b": 0.62, "delta": -0.18, "n": 200,
         "method": "mcnemar", "p_value": 0.0004, "fixed": 1, "broken": 20, "beyond_noise": True, "regression": True},
        {"benchmark": "kmmlu", "subject": "금융", "metric": "acc", "a": 0.60, "b": 0.66, "delta": 0.06, "n": 200,
         "method": "mcnemar", "p_value": 0.31, "fixed": 3, "broken": 8, "beyond_noise": False, "regression": False},
        {"benchmark": "arc_easy", "subject": None, "metric": "acc", "a": 0.50, "b": 0.52, "delta": 0.02, "n": 100,
         "method": "unpaired", "p_value": 0.77, "fixed": None, "broken": None, "beyond_noise": False,
         "regression": False},
    ],
}
FLIPS = [{"benchmark": "kmmlu", "subject": "보험학", "task": "kmmlu_insurance", "doc_id": 7,
          "question": "재보험 의 목적 은 무엇 인가 ?", "expected": "위험 분산", "a_answer": "위험 분산",
          "b_answer": "광고", "change": "broken"}]
LEADERBOARD = {"rows": [
    {"model": m, "benchmark": b, "subject": s, "metric": "acc", "value": v, "stderr": 0.02, "n": 200,
     "run_id": f"run_{m}", "finished_at": "2026-11-23T02:10:00+09:00"}
    for m, b, s, v in [
        ("model-a", "kmmlu", None, 0.71), ("model-b", "kmmlu", None, 0.64), ("model-c", "kmmlu", None, 0.68),
        ("model-a", "arc_easy", None, 0.55), ("model-b", "arc_easy", None, 0.81), ("model-c", "arc_easy", None, 0.60),
        ("model-a", "kmmlu", "보험학", 0.80), ("model-b", "kmmlu", "보험학", 0.62), ("model-c", "kmmlu", "보험학", 0.90),
        ("model-a", "kmmlu", "금융", 0.62), ("model-b", "kmmlu", "금융", 0.66), ("model-c", "kmmlu", "금융", 0.46),
    ]]}


def test_noise_band_is_the_unpaired_normal_approximation_unless_given():
    """Without delta_ci95 the band is delta +/- 1.96 sqrt(a(1-a)/n + b(1-b)/n); with it, that one."""
    row = COMPARE["rows"][3]
    half = 1.959963984540054 * math.sqrt(0.5 * 0.5 / 100 + 0.52 * 0.48 / 100)
    assert pages.noise_band(row) == pytest.approx((0.02 - half, 0.02 + half))
    assert pages.noise_band({**row, "delta_ci95": [-0.1, 0.15]}) == (-0.1, 0.15)
    assert pages.noise_band({**row, "a": None}) is None


def test_compare_markdown_rows():
    """The Markdown comparison has one line per row with the rows' numbers, and the flipped question."""
    text = pages.compare_markdown(COMPARE, FLIPS)
    assert "| kmmlu | 보험학 | acc | 80.0% | 62.0% | -18.0 pts |" in text
    assert "| 0.0004 | 1 | 20 | **regression** |" in text
    assert "| arc_easy | (all) | acc | 50.0% | 52.0% | +2.0 pts |" in text
    assert "| kmmlu · 보험학 #7 | 재보험 의 목적 은 무엇 인가 ? | 위험 분산 | 위험 분산 | 광고 | broken |" in text


def test_leaderboard_markdown_ranks_by_mean():
    """Models × benchmarks and × subjects, best mean first."""
    text = pages.leaderboard_markdown(LEADERBOARD)
    assert "| Model | kmmlu | arc_easy | Mean |" in text
    lines = [li for li in text.splitlines() if li.startswith("| model-")]
    assert lines[0] == "| model-b | 64.0% | 81.0% | 72.5% |"
    assert "| Model | kmmlu · 보험학 | kmmlu · 금융 | Mean |" in text


def test_compare_page_in_the_browser(chromium, tmp_path):
    """The comparison page: table values equal the rows, one signed bar per row in the charts, Korean subject
    labels, no network; screenshot kept."""
    path = pages.write_page(tmp_path / "compare.html", pages.compare_html(COMPARE, FLIPS))
    opened = open_page(chromium, path)
    assert_offline(opened, path)
    page = opened.page
    shown = page.evaluate("""() => [...document.querySelectorAll('#compare-table tbody tr')].map(tr =>
        [tr.dataset.benchmark, tr.dataset.subject,
         ...['a', 'b', 'delta', 'p_value'].map(f => tr.querySelector(`td[data-field=${f}]`).dataset.value)])""")
    assert shown == [[r["benchmark"], r["subject"] or "", str(r["a"]), str(r["b"]), str(r["delta"]), str(r["p_value"])]
                     for r in COMPARE["rows"]]
    assert chart_bars(opened) == {"compare-benchmarks": 2, "compare-kmmlu": 2}
    assert page.locator("#compare-kmmlu text.label").all_text_contents() == ["보험학", "금융"]
    assert page.locator("#compare-kmmlu rect.bar.delta-down").count() == 1
    assert page.locator("#verdict").text_content() == "2 regressions"
    assert "광고" in page.locator("#flip-table").text_content()
    screenshot(opened, tmp_path / "compare.png", "report_compare.png")


def test_leaderboard_page_sorts_in_the_browser(chromium, tmp_path):
    """The leaderboard page: cells equal the rows, a chart per benchmark and subject with a bar per model, sorting by
    a column header works under the page's policy (its one script allowed by hash), no network."""
    path = pages.write_page(tmp_path / "leaderboard.html", pages.leaderboard_html(LEADERBOARD))
    opened = open_page(chromium, path)
    assert_offline(opened, path)
    page = opened.page
    assert "script-src 'sha256-" in page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")

    def models(table: str) -> list[str]:
        return page.evaluate(f"() => [...document.querySelectorAll('#{table} tbody tr')].map(tr => tr.dataset.model)")

    assert models("board-benchmarks") == ["model-b", "model-c", "model-a"]  # by mean: 72.5%, 64.0%, 63.0%
    values = page.evaluate("""() => [...document.querySelectorAll('#board-subjects tbody tr')].map(tr =>
        [tr.dataset.model, ...[...tr.querySelectorAll('td[data-value]')].map(td => td.dataset.value)])""")
    expected = {r["model"]: {} for r in LEADERBOARD["rows"]}
    for r in LEADERBOARD["rows"]:
        expected[r["model"]][r["subject"]] = str(r["value"])
    assert values == [[m, expected[m]["보험학"], expected[m]["금융"]] for m, *_ in values]
    page.locator("#board-benchmarks th", has_text="arc_easy").click()
    assert models("board-benchmarks") == ["model-b", "model-c", "model-a"]
    page.locator("#board-subjects th", has_text="보험학").click()
    assert models("board-subjects") == ["model-c", "model-a", "model-b"]
    page.locator("#board-subjects th", has_text="보험학").click()
    assert models("board-subjects") == ["model-b", "model-a", "model-c"]
    assert chart_bars(opened) == {f"leader-{i}": 3 for i in range(4)}
    assert page.locator("#leader-2 title").first.text_content() == "kmmlu · 보험학: acc"
    assert opened.console == []
    screenshot(opened, tmp_path / "leaderboard.png", "report_leaderboard.png")
