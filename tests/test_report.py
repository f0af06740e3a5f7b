"""Run reports: written by `--report` and by `report RUN_ID` from runs against the rigged test server, checked as
files and in a real browser (numbers equal the summary's, charts drawn, Korean labels kept, no network)."""

from __future__ import annotations

import json
import re

import pytest

from evalchemy.testing.server import TestServer
from tests import statsdata
from tests.browser import assert_offline, chart_bars, open_page, screenshot

FIELDS = ("accuracy", "n", "confidence", "ece", "no_answer")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The rigged run with --report: sure, kmmlu_domain (보험학, 금융), parse, and broken (fails)."""
    folder = tmp_path_factory.mktemp("report")
    assets = statsdata.write_tasks(folder)
    config = folder / "eval_config.json"
    config.write_text(json.dumps(statsdata.config(), ensure_ascii=False), encoding="utf-8")
    with TestServer(assets["tokenizer"], "test-model", answers=statsdata.server_answers()) as srv:
        done = statsdata.run(srv, assets, config, folder / "o", "rep", "--report")
    assert done.returncode == 4, done.stderr
    run_dir = folder / "o" / "rep"
    summary = json.loads((run_dir / "evalchemy_summary_rep.json").read_text(encoding="utf-8"))
    return {"dir": run_dir, "output": folder / "o", "summary": summary, "stdout": done.stdout}


def _expected_row(summary: dict, name: str) -> dict:
    entry = summary["stats"]["benchmark"].get(name) or {}
    return {"accuracy": entry.get("accuracy"), "n": entry.get("n"),
            "confidence": (entry.get("confidence") or {}).get("mean"), "ece": (entry.get("confidence") or {}).get("ece"),
            "no_answer": (entry.get("no_answer") or {}).get("rate"), "ci95": entry.get("ci95")}


def test_run_with_report_flag_leaves_both_files(run):
    """--report writes report.html and report.md next to the summary; stdout still carries only the summary path."""
    assert (run["dir"] / "report.html").stat().st_size > 5000
    assert (run["dir"] / "report.md").stat().st_size > 500
    assert run["stdout"] == f"{run['dir'] / 'evalchemy_summary_rep.json'}\n"


def test_report_command_rewrites_the_files_and_prints_their_paths(run, tmp_path):
    """`run_evalchemy.sh report RUN_ID --output DIR` (or a run folder's path) writes both files again and prints
    their paths; --max-errors limits the error cases."""
    import shutil

    run_dir = tmp_path / "o" / "rep"
    shutil.copytree(run["dir"], run_dir)
    (run_dir / "report.md").unlink()
    done = statsdata.run_cli("report", "rep", "--output", str(tmp_path / "o"), "--max-errors", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{run_dir / 'report.html'}\n{run_dir / 'report.md'}\n"
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    assert markdown.count("| kmmlu_domain / demo_kmmlu_") + markdown.count("| parse / ") + \
        markdown.count("| sure / ") == 3
    assert statsdata.run_cli("report", str(run_dir)).stdout == done.stdout


def test_report_for_a_missing_run_exits_2_naming_the_folder(tmp_path):
    """An unknown run id is a usage error (exit 2) that says which folder was looked for."""
    done = statsdata.run_cli("report", "nope", "--output", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"error: {tmp_path / 'o' / 'nope'}: no such run folder (pass a run id under --output, "
                           "or the folder itself)\n")


def test_markdown_carries_the_same_tables(run):
    """report.md's score table has the summary's numbers; subjects in Korean; the failure names its log file."""
    markdown = (run["dir"] / "report.md").read_text(encoding="utf-8")
    summary = run["summary"]
    for name in summary["order"]:
        row = _expected_row(summary, name)
        line = next(li for li in markdown.splitlines() if li.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        shown = f"{row['accuracy'] * 100:.1f}%" if row["accuracy"] is not None else "–"
        assert cells[3] == shown, line
        if row["ci95"]:
            assert cells[4] == f"{row['ci95'][0] * 100:.1f}% – {row['ci95'][1] * 100:.1f}%"
    assert "| 보험학 | 75.0% |" in markdown and "| 금융 | 40.0% |" in markdown
    assert "- **broken** (failed): demo_broken: TemplateAssertionError: No filter named 'no_such_filter'. " \
           "(log: `broken_benchmark.log`)" in markdown
    assert "| parse / demo_parse #1 | Say the word river Answer: | river | [invalid] (raw: no idea) |" in markdown


def test_report_reads_a_version_1_summary(run, tmp_path):
    """A summary without the stats layer (schema_version 1) still gives a report with intervals from its scores."""
    import shutil

    from evalchemy.reports.run_report import write_run_report

    run_dir = tmp_path / "old"
    shutil.copytree(run["dir"], run_dir)
    old = json.loads(json.dumps(run["summary"]))
    old["schema_version"] = 1
    del old["stats"]
    (run_dir / "evalchemy_summary_rep.json").write_text(json.dumps(old, ensure_ascii=False), encoding="utf-8")
    files = write_run_report(run_dir)
    markdown = files.markdown.read_text(encoding="utf-8")
    ci = run["summary"]["stats"]["benchmark"]["kmmlu_domain"]["ci95"]
    assert f"| kmmlu_domain | success | acc | 55.6% | {ci[0] * 100:.1f}% – {ci[1] * 100:.1f}% | 9 | – | – | – |" \
        in markdown


def test_run_report_in_the_browser(run, chromium, tmp_path):
    """In chromium: the score table equals the summary, every chart has bars, Korean labels survive, the page makes
    no request and names no external URL; a screenshot is kept (docs/report_run.png when regenerating docs)."""
    path = run["dir"] / "report.html"
    opened = open_page(chromium, path)
    page = opened.page
    assert_offline(opened, path)
    summary = run["summary"]
    rows = page.evaluate("""() => [...document.querySelectorAll('#score-table tbody tr')].map(tr => ({
        name: tr.dataset.benchmark,
        cells: Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map(td =>
            [td.dataset.field, {value: td.dataset.value, text: td.textContent.trim()}]))}))""")
    assert [r["name"] for r in rows] == summary["order"]
    for row in rows:
        expected = _expected_row(summary, row["name"])
        for name in FIELDS:
            value = expected[name]
            assert row["cells"][name]["value"] == ("" if value is None else str(value)), (row["name"], name)
        shown = "–" if expected["accuracy"] is None else f"{expected['accuracy'] * 100:.1f}%"
        assert row["cells"]["accuracy"]["text"] == shown
        ci = expected["ci95"]
        assert row["cells"]["ci95"]["value"] == (f"{ci[0]},{ci[1]}" if ci else "")

    bars = chart_bars(opened)
    assert bars == {"chart-overview": 3, "chart-sure": 1, "chart-sure-reliability": 4, "chart-sure-length": 2,
                    "chart-kmmlu_domain": 2, "chart-kmmlu_domain-reliability": 1, "chart-kmmlu_domain-length": 1,
                    "chart-parse": 1, "chart-parse-length": 1}
    labels = page.locator("#chart-kmmlu_domain text.label").all_text_contents()
    assert labels == ["보험학", "금융"]
    assert page.locator('#benchmark-kmmlu_domain tr[data-subject="보험학"] td').first.text_content() == "보험학"
    failure = page.locator('#failures article[data-benchmark="broken"]')
    assert "broken_benchmark.log" in failure.text_content()
    assert "no_such_filter" in failure.locator("pre").text_content()
    assert page.locator("#error-cases tbody tr").count() == 10  # the default --max-errors; 10 are wrong
    screenshot(opened, tmp_path / "report_run.png", "report_run.png")

    page.emulate_media(media="print")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1000
    assert chart_bars(opened)["chart-kmmlu_domain"] == 2
    page.pdf(path=str(tmp_path / "report_run.pdf"))
    assert (tmp_path / "report_run.pdf").read_bytes().startswith(b"%PDF")

    narrow = open_page(chromium, path, width=390)
    overflow = narrow.page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= 390
    screenshot(narrow, tmp_path / "report_run_narrow.png")
    assert re.search(r"<html lang=\"ko\">", path.read_text(encoding="utf-8"))


def test_report_of_a_run_that_failed_preflight(run, tmp_path):
    """--report on a run whose endpoint is down: exit 3 stands, the report shows the failure and no score chart."""
    config = tmp_path / "eval_config.json"
    config.write_text(json.dumps(statsdata.config(), ensure_ascii=False), encoding="utf-8")
    folder = run["dir"].parent.parent
    done = statsdata.run_cli("--endpoint", "http://127.0.0.1:9/v1", "--config", str(config), "--output",
                             str(tmp_path / "o"), "--run-id", "down", "--include-path", str(folder / "tasks"),
                             "--include-path", str(folder / "broken_tasks"), "--report")
    assert done.returncode == 3, done.stderr
    markdown = (tmp_path / "o" / "down" / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# evalchemy run down\n\nStatus: **failed** (endpoint http://127.0.0.1:9/v1/models is "
                               "not reachable: [Errno 111] Connection refused;")
    html = (tmp_path / "o" / "down" / "report.html").read_text(encoding="utf-8")
    assert '<pre id="run-error">endpoint http://127.0.0.1:9/v1/models is not reachable' in html
    assert 'id="chart-overview"' not in html


def test_text_from_samples_is_escaped(run, tmp_path):
    """Markup inside a question or an answer is shown as text, never loaded: no tag from the data reaches the page."""
    import shutil

    from evalchemy.reports.run_report import write_run_report

    run_dir = tmp_path / "rep"
    shutil.copytree(run["dir"], run_dir)
    summary = json.loads(json.dumps(run["summary"]))
    sample = {"doc_id": 0, "target": "<b>x</b>", "arguments": {"gen_args_0": {"arg_0": '<img src="http://x.invalid/a">',
                                                                                 "arg_1": {}}},
              "resps": [["<script>alert(1)</script>"]], "filtered_resps": ["<script>alert(1)</script>"],
              "filter": "get-answer", "metrics": ["exact_match"], "exact_match": 0.0}
    (run_dir / "samples_evil_2026-01-01T00-00-00.000001.jsonl").write_text(json.dumps(sample) + "\n")
    summary["benchmarks"]["parse"]["files"] = ["samples_evil_2026-01-01T00-00-00.000001.jsonl"]
    (run_dir / "evalchemy_summary_rep.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    html = write_run_report(run_dir).html.read_text(encoding="utf-8")
    assert "&lt;img src=&#34;http://x.invalid/a&#34;&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "<script" not in html
