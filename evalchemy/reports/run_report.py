"""A run's report: ``report.html`` and ``report.md`` in the run folder, from its summary (and lm-eval's samples
files when the run logged them).

Reads schema version 1 and 2 summaries; for version 1 (no stats layer) the stats come from the scores and sample
counts (accuracy, n, Wilson interval; no confidence, no-answer or length figures)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from evalchemy.errors import UsageError, setting
from evalchemy.reports.charts import Bar, BarChart, Reliability
from evalchemy.reports.render import CSP, pct, render, write_text_atomic
from evalchemy.results.stats import stats_from_summary_entry
from evalchemy.results.summary import READABLE_VERSIONS

logger = logging.getLogger(__name__)

DEFAULT_ERROR_CASES = 10
SLOWEST = 5
LOG_EXCERPT_LINES = 12
TEXT_LIMIT = 600


@dataclass
class ReportFiles:
    html: Path
    markdown: Path


def find_summary(run_dir: Path) -> Path:
    """The summary in a run folder; UsageError naming the folder when there is none."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder (pass a run id under {setting('output')}, or the folder "
                         "itself)")
    found = sorted(run_dir.glob("evalchemy_summary_*.json"))
    if not found:
        raise UsageError(f"{run_dir}: no evalchemy_summary_*.json in this folder; was the run started there?")
    preferred = run_dir / f"evalchemy_summary_{run_dir.name}.json"
    return preferred if preferred in found else found[0]


def load_summary(path: Path) -> dict:
    """A summary of schema version 1 or 2, with a stats layer (derived for version 1)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read the summary ({err})") from None
    version = summary.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise UsageError(f"{path}: summary schema_version {version!r} is not one this evalchemy reads "
                         f"({' or '.join(map(str, READABLE_VERSIONS))}); "
                         "update evalchemy")
    if "stats" not in summary:
        breakdown = (summary.get("breakdown") or {}).get("benchmark") or {}
        derived = {}
        for name, bench in (summary.get("benchmarks") or {}).items():
            if bench.get("status") == "success":
                entry = stats_from_summary_entry(bench, breakdown.get(f"{name}_accuracy"),
                                                 breakdown.get(f"{name}_subject_accuracy"))
                if entry is not None:
                    derived[name] = entry
        summary["stats"] = {"benchmark": derived, "method": {}}
    return summary


def _strip_credentials(url: str | None) -> str | None:
    if not url:
        return url
    from evalchemy.redaction import strip_credentials

    return strip_credentials(url) if "://" in url else url


def _backend(summary: dict) -> str:
    recorded = summary.get("backend")
    if isinstance(recorded, dict) and recorded.get("lm_eval_model"):
        return f"{recorded.get('name')} (lm-eval {recorded['lm_eval_model']})"
    if summary.get("endpoint") == "local":
        return "local (lm-eval local-completions)"
    for bench in (summary.get("benchmarks") or {}).values():
        for run in bench.get("runs") or []:
            found = re.search(r"--model (\S+)", run.get("lm_eval_command") or "")
            if found:
                return f"lm-eval {found.group(1)}"
    return "lm-eval local-completions"


def _meta(summary: dict) -> list[tuple[str, str]]:
    versions = summary.get("versions") or {}
    tokenizer = summary.get("tokenizer") or {}
    config = summary.get("config") or {}
    counts = summary.get("counts") or {}
    return [
        ("Run id", summary.get("run_id") or ""),
        ("Status", f"{summary.get('status')} (exit code {summary.get('exit_code')})"),
        ("Model", summary.get("model") or "–"),
        ("Endpoint", _strip_credentials(summary.get("endpoint")) or "–"),
        ("Backend", _backend(summary)),
        ("Tokenizer", f"{tokenizer.get('backend')}: {tokenizer.get('path') or '–'}" if tokenizer else "–"),
        ("Config", f"{config.get('path')} (sha256 {str(config.get('sha256'))[:12]})"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v)),
        ("Started", summary.get("started_at") or "–"),
        ("Finished", summary.get("finished_at") or "–"),
        ("Duration", f"{summary.get('duration_s', 0):.1f} s"),
        ("Benchmarks", ", ".join(f"{counts.get(k, 0)} {k}" for k in ("success", "failed", "timeout", "skipped"))),
    ]


def _score_rows(summary: dict) -> list[dict]:
    stats = summary["stats"]["benchmark"]
    rows = []
    for name in summary.get("order") or list(summary.get("benchmarks") or {}):
        bench = summary["benchmarks"][name]
        entry = stats.get(name) or {}
        conf = entry.get("confidence") or {}
        no_answer = entry.get("no_answer") or {}
        rows.append({"name": name, "description": bench.get("description") or "", "status": bench.get("status"),
                     "metric": entry.get("metric") or bench.get("primary_metric"), "accuracy": entry.get("accuracy"),
                     "ci95": entry.get("ci95"), "n": entry.get("n"), "confidence": conf.get("mean"),
                     "ece": conf.get("ece"), "no_answer": no_answer.get("rate"),
                     "duration_s": bench.get("duration_s"), "resumed": bench.get("resumed", False)})
    return rows


def _note(entry: dict) -> str:
    text = pct(entry.get("accuracy"))
    if entry.get("n"):
        text += f" (n={entry['n']})"
    return text


def _bar(label: str, entry: dict) -> Bar:
    ci = entry.get("ci95") or (None, None)
    return Bar(label=label, value=entry.get("accuracy"), lo=ci[0], hi=ci[1], note=_note(entry))


def _ordered(summary: dict) -> list[tuple[str, dict]]:
    """The stats entries in the run's order (the summary's keys are sorted)."""
    stats = summary["stats"]["benchmark"]
    order = [n for n in summary.get("order") or [] if n in stats]
    return [(n, stats[n]) for n in order + sorted(set(stats) - set(order))]


def _subjects(summary: dict, name: str, entry: dict) -> dict:
    """Subject entries in the config's task order where the labels are the task entries' labels."""
    subjects = entry.get("subjects") or {}
    runs = ((summary.get("benchmarks") or {}).get(name) or {}).get("runs") or []
    order = [r.get("label") for r in runs if r.get("label") in subjects]
    return {k: subjects[k] for k in order + sorted(set(subjects) - set(order))}


def _sections(summary: dict) -> list[dict]:
    """Per benchmark with stats: its chart (subjects, or the benchmark alone), subjects table, calibration,
    prompt-length chart."""
    sections = []
    for name, entry in _ordered(summary):
        subjects = _subjects(summary, name, entry)
        bars = [_bar(label, sub) for label, sub in subjects.items()] or [_bar(name, entry)]
        title = f"{name}: {entry.get('metric') or 'score'} per subject" if subjects else \
            f"{name}: {entry.get('metric') or 'score'}"
        conf = entry.get("confidence") or None
        lengths = entry.get("prompt_length") or []
        sections.append({
            "name": name, "entry": entry, "chart": BarChart(title=title, bars=bars),
            "subjects": [{"label": label, **sub} for label, sub in subjects.items()],
            "reliability": Reliability(title=f"{name}: reliability diagram", bins=conf["bins"])
            if conf and conf.get("bins") else None,
            "lengths": BarChart(title=f"{name}: {entry.get('metric') or 'score'} by prompt length (characters)",
                                bars=[Bar(label=b["bucket"], value=b["accuracy"],
                                          note=f"{pct(b['accuracy'])} (n={b['n']})") for b in lengths])
            if len(lengths) > 0 else None,
            "length_rows": lengths,
        })
    return sections


def _log_excerpt(run_dir: Path, log_name: str) -> str:
    path = run_dir / log_name
    try:
        lines = [line.rstrip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line[:300] for line in lines if line.strip()]
    return "\n".join(lines[-LOG_EXCERPT_LINES:])


def _failures(summary: dict, run_dir: Path) -> list[dict]:
    out = []
    for name, bench in (summary.get("benchmarks") or {}).items():
        if bench.get("status") not in ("failed", "timeout"):
            continue
        log_name = next((f for f in bench.get("files") or [] if f.endswith("_benchmark.log")),
                        f"{name}_benchmark.log")
        out.append({"name": name, "status": bench["status"], "error": bench.get("error") or "",
                    "log": log_name, "excerpt": _log_excerpt(run_dir, log_name)})
    return out


def _slowest(summary: dict) -> list[dict]:
    runs = [{"benchmark": name, "entry": run.get("entry"), "label": run.get("label"), "status": run.get("status"),
             "duration_s": run.get("duration_s") or 0.0}
            for name, bench in (summary.get("benchmarks") or {}).items() for run in bench.get("runs") or []]
    return sorted(runs, key=lambda r: -r["duration_s"])[:SLOWEST]


def _short(text, limit: int = TEXT_LIMIT) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _float(value) -> float | None:
    try:
        return float(value[0] if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def error_case(sample: dict, metric: str) -> dict | None:
    """Question, expected and answered for a sample lm-eval scored 0 on ``metric``; None when it is right."""
    if sample.get(metric) not in (0, 0.0, False):
        return None
    arguments = sample.get("arguments") or {}
    args = list(arguments.values()) if isinstance(arguments, dict) else list(arguments)

    def arg(i: int, k: int):
        item = args[i] if i < len(args) else None
        if isinstance(item, dict):
            return item.get(f"arg_{k}")
        return item[k] if isinstance(item, (list, tuple)) and k < len(item) else None

    question = arg(0, 0)
    resps = sample.get("filtered_resps") or []
    lls = [_float(r) for r in resps]
    if len(args) > 1 and lls and all(v is not None for v in lls):  # multiple choice: one request per choice
        chosen = lls.index(max(lls))
        try:
            target = int(sample.get("target"))
            expected = arg(target, 1)
        except (TypeError, ValueError):
            expected = sample.get("target")
        answered = arg(chosen, 1)
    else:
        expected = sample.get("target")
        answered = resps[0] if resps else None
        raw = (sample.get("resps") or [[None]])[0]
        raw = raw[0] if isinstance(raw, list) and raw else raw
        if isinstance(raw, str) and raw.strip() != str(answered).strip():
            answered = f"{answered} (raw: {raw.strip()})"
    return {"doc_id": sample.get("doc_id"), "question": _short(question), "expected": _short(expected).strip(),
            "answered": _short(answered).strip()}


def _error_cases(summary: dict, run_dir: Path, limit: int) -> list[dict]:
    cases: list[dict] = []
    stats = summary["stats"]["benchmark"]
    for name, bench in (summary.get("benchmarks") or {}).items():
        metric = (stats.get(name) or {}).get("metric") or bench.get("primary_metric")
        for rel in bench.get("files") or []:
            if len(cases) >= limit:
                return cases
            if not re.search(r"(^|/)samples_.*\.jsonl$", rel) or not metric:
                continue
            task = re.sub(r"_\d{4}-\d\d-\d\dT[\d.-]+$", "", Path(rel).stem[len("samples_"):])
            try:
                lines = (run_dir / rel).read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    case = error_case(json.loads(line), metric)
                except ValueError:
                    continue
                if case is not None:
                    cases.append({"benchmark": name, "task": task, **case})
                    if len(cases) >= limit:
                        return cases
    return cases


def run_view(summary: dict, run_dir: Path, max_errors: int = DEFAULT_ERROR_CASES) -> dict:
    """Everything the run templates show, as plain data."""
    stats = summary["stats"]["benchmark"]
    overview = BarChart(title="Score per benchmark (95% Wilson interval)",
                        bars=[_bar(name, entry) for name, entry in _ordered(summary)])
    return {
        "title": f"evalchemy run {summary.get('run_id')}" + (f": {summary['model']}" if summary.get("model") else ""),
        "summary": summary,
        "meta": _meta(summary),
        "scores": _score_rows(summary),
        "overview": overview if stats else None,
        "sections": _sections(summary),
        "method": (summary.get("stats") or {}).get("method") or {},
        "failures": _failures(summary, run_dir),
        "slowest": _slowest(summary),
        "errors": _error_cases(summary, run_dir, max_errors),
        "max_errors": max_errors,
        "csp": CSP,
        "lang": "ko" if any(re.search("[\uac00-\ud7a3]", s) for s in _labels(summary)) else "en",
    }


def _labels(summary: dict):
    for entry in summary["stats"]["benchmark"].values():
        yield from (entry.get("subjects") or {})


def write_run_report(run_dir: Path, max_errors: int = DEFAULT_ERROR_CASES) -> ReportFiles:
    """Write ``report.html`` and ``report.md`` into ``run_dir`` from its summary."""
    summary = load_summary(find_summary(run_dir))
    view = run_view(summary, run_dir, max_errors)
    files = ReportFiles(html=run_dir / "report.html", markdown=run_dir / "report.md")
    write_text_atomic(files.html, render("run.html.j2", **view))
    write_text_atomic(files.markdown, render("run.md.j2", **view))
    logger.info("report: %s and %s", files.html, files.markdown.name)
    return files
