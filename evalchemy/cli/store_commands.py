"""The results store's commands: ``store import``, ``store upgrade``, ``compare``, ``leaderboard``, ``history``.

``evalchemy.cli.app.main`` hands the command line here when its first word is one of ``COMMANDS``; everything
else is the run command as before. Output (tables, JSON, CSV, Markdown) goes to stdout, messages to stderr.
"""

from __future__ import annotations

import csv
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from evalchemy.cli.common import EvalchemyCommand, home, setup_console_logging
from evalchemy.errors import EXIT_REGRESSION, NotInStore, UsageError

COMMANDS = ("compare", "leaderboard", "history", "store")
SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
STORE_HELP = ("Results store: a SQLite file or sqlite:///FILE, or postgresql://USER@HOST:PORT/DB. Default: "
              "$EVALCHEMY_STORE, else evalchemy.db in --output.")


def store_options(func):
    func = click.option("--output", "output_dir", metavar="DIR",
                        help="Results folder whose evalchemy.db is the default store. Default: results.")(func)
    return click.option("--store", metavar="URL", help=STORE_HELP)(func)


def _url(store: str | None, output_dir: str | None) -> str:
    from evalchemy.store.url import resolve_url

    return resolve_url(store, Path(output_dir) if output_dir else home() / "results")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=max(140, Console().width))


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@click.group(context_settings=SETTINGS)
def group():
    """Commands on the results store (every run records itself there at its end)."""
    setup_console_logging("WARNING")


@group.group(context_settings=SETTINGS)
def store():
    """Record runs in the store, or upgrade its schema."""


@store.command("import", cls=EvalchemyCommand, context_settings=SETTINGS)
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_options
def import_(folders, store, output_dir):
    """Record the runs in FOLDERS (run folders, or output folders holding them) from their summary, results and
    score files: runs made before the store existed or while it could not be reached. Importing again changes
    nothing; a run id already in the store is replaced. Prints each run id recorded.
    """
    from evalchemy.store.db import display
    from evalchemy.store.record import import_dirs

    url = _url(store, output_dir)
    done = import_dirs(url, list(folders))
    for item in done:
        click.echo(f"recorded {item.run_id} ({item.status}) from {item.run_dir}", err=True)
        click.echo(item.run_id)
    click.echo(f"{len(done)} run(s) recorded in {display(url)}", err=True)


@store.command("upgrade", cls=EvalchemyCommand, context_settings=SETTINGS)
@store_options
def upgrade(store, output_dir):
    """Bring the store's schema to this version's (runs and `store import` do it by themselves)."""
    from evalchemy.store.db import HEAD, display
    from evalchemy.store.record import open_for_writing

    url = _url(store, output_dir)
    open_for_writing(url).dispose()
    click.echo(f"{display(url)}: schema revision {HEAD}", err=True)


def _split_run(value: str, default_url: str) -> tuple[str, str]:
    if "#" in value:
        url, run_id = value.rsplit("#", 1)
        return _url(url, None), run_id
    return default_url, value


def _load(value: str, default_url: str):
    from evalchemy.store.queries import load_run, reader

    url, run_id = _split_run(value, default_url)
    with reader(url) as connection, _hint_when_missing():
        return load_run(connection, run_id, url)


@contextmanager
def _hint_when_missing():
    """A run or model the store lacks: the message says which command lists what it has."""
    try:
        yield
    except NotInStore as err:
        hint = {"run": "`evalchemy history --model M` lists run ids; `evalchemy store import DIR` records a run folder",
                "model": "`evalchemy leaderboard --all-runs` lists the models it holds"}[err.what]
        raise NotInStore(f"{err.message}: {hint}", err.what) from None


def _titled(run_id: str, backend: str | None) -> str:
    return f"{run_id} ({backend})" if backend else run_id


def _verdict(row) -> str:
    if not row.comparable:
        return "not comparable"
    if row.p_value is None:
        return "not tested"
    if row.regression:
        return "REGRESSION"
    worse = (row.delta < 0) if row.higher_is_better else (row.delta > 0)
    if row.beyond_noise:
        return "worse" if worse else "better"
    return "within noise"


def _points(delta: float | None) -> str:
    return "" if delta is None else f"{delta * 100:+.2f}"


def _compare_cells(row) -> list[str]:
    return [row.benchmark, row.subject or "", row.metric or "", _num(row.a), _num(row.b), _points(row.delta),
            "" if row.n is None else str(row.n), row.method or "",
            "" if row.fixed is None else f"{row.fixed}/{row.broken}", _num(row.p_value), _num(row.p_adjusted),
            _verdict(row)]


COMPARE_COLUMNS = ("benchmark", "subject", "metric", "A", "B", "Δ points", "n", "test", "fixed/broken", "p",
                   "p (Holm)", "verdict")
FLIP_COLUMNS = ("benchmark", "subject", "task", "doc", "change", "target", "A answered", "B answered")


def _flip_cells(flip) -> list[str]:
    return [flip.benchmark, flip.subject or "", flip.task, flip.doc_id, flip.change, flip.target or "",
            flip.prediction_a or "", flip.prediction_b or ""]


def _markdown(comparison, show_flips: int) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [f"## {comparison.a} → {comparison.b}", "", line(COMPARE_COLUMNS),
           line(["---"] * len(COMPARE_COLUMNS))]
    out += [line(_compare_cells(r)) for r in comparison.rows]
    notes = [f"- {r.benchmark}{' / ' + r.subject if r.subject else ''}: {r.note}" for r in comparison.rows if r.note]
    if notes:
        out += ["", *notes]
    if show_flips and comparison.flips:
        out += ["", f"Flipped questions (first {min(show_flips, len(comparison.flips))} of "
                    f"{len(comparison.flips)}):", "", line(FLIP_COLUMNS), line(["---"] * len(FLIP_COLUMNS))]
        out += [line(_flip_cells(f)) for f in comparison.flips[:show_flips]]
    return "\n".join(out) + "\n"


@group.command(cls=EvalchemyCommand, context_settings=SETTINGS, epilog="""\b
Exit codes:
  0    compared (no regression beyond the threshold)
  1    unexpected internal error
  2    usage error, store unreadable, or a run id not in the store
  6    --fail-on-regression: a benchmark or subject dropped by more than POINTS, beyond noise at --alpha
""")
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--markdown", is_flag=True, help="Print the comparison as a Markdown table.")
@click.option("--show-flips", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="List the first N questions that flipped (broken first, then fixed).")
@click.option("--fail-on-regression", type=click.FloatRange(min=0), metavar="POINTS",
              help="Exit with code 6 when a benchmark or subject got worse by more than POINTS (accuracy points: "
                   "100 x the metric) and the change is beyond noise at --alpha.")
@click.option("--alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.05,
              show_default=True, metavar="P", help="Significance level, after Holm's correction over every row.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the page as one self-contained HTML file (no external resource; opens offline).")
@store_options
def compare(run_a, run_b, as_json, markdown, show_flips, fail_on_regression, alpha, html_path, store, output_dir):
    """Compare RUN_A with RUN_B (each a run id, or STORE-URL#RUN-ID) per benchmark and per subject label: both
    scores, the difference (B - A), and whether it is beyond noise: an exact McNemar test on the questions that
    flipped when both runs scored the same questions, else a test from the standard errors; Holm-corrected.
    Rows whose measurements differ (task config, num_fewshot, limit, lm-eval version, data) are marked, not tested.
    """
    from evalchemy.results.compare import compare as compare_runs

    if as_json and markdown:
        raise UsageError("--json and --markdown cannot be combined: pick one")
    url = _url(store, output_dir)
    comparison = compare_runs(_load(run_a, url), _load(run_b, url), alpha=alpha,
                              threshold=fail_on_regression or 0.0)
    if as_json:
        click.echo(json.dumps(comparison.to_json(show_flips), indent=2, ensure_ascii=False))
    elif markdown:
        click.echo(_markdown(comparison, show_flips), nl=False)
    else:
        console = _console()
        table = Table(title=f"{_titled(comparison.a, comparison.backends.get('a'))} → "
                            f"{_titled(comparison.b, comparison.backends.get('b'))}")
        for column in COMPARE_COLUMNS:
            table.add_column(column, justify="right" if column in ("A", "B", "Δ points", "n", "p", "p (Holm)")
                             else "left")
        for row in comparison.rows:
            table.add_row(*_compare_cells(row))
        console.print(table)
        for row in comparison.rows:
            if row.note:
                console.print(f"{row.benchmark}{' / ' + row.subject if row.subject else ''}: {row.note}")
        if show_flips and comparison.flips:
            flips = Table(title=f"Flipped questions (first {min(show_flips, len(comparison.flips))} of "
                                f"{len(comparison.flips)})")
            for column in FLIP_COLUMNS:
                flips.add_column(column)
            for flip in comparison.flips[:show_flips]:
                flips.add_row(*_flip_cells(flip))
            console.print(flips)
    if html_path is not None:
        from evalchemy.reports import pages

        data = comparison.to_json()
        flips = [{**f, "expected": f["target"], "a_answer": f["prediction_a"], "b_answer": f["prediction_b"]}
                 for f in data["flips"]]
        click.echo(f"comparison page: {pages.write_page(html_path, pages.compare_html(data, flips))}", err=True)
    if fail_on_regression is not None and comparison.regressions:
        for row in comparison.regressions:
            click.echo(f"regression: {row.benchmark}{' / ' + row.subject if row.subject else ''} {row.metric} "
                       f"{_num(row.a)} -> {_num(row.b)} ({_points(row.delta)} points, p={row.p_adjusted:.4g} "
                       f"after Holm): worse by more than {fail_on_regression:g} points", err=True)
        click.get_current_context().exit(EXIT_REGRESSION)


LEADER_FIELDS = ("model", "benchmark", "subject", "metric", "value", "stderr", "n", "run_id", "finished_at")


@group.command(cls=EvalchemyCommand, context_settings=SETTINGS)
@click.option("--by", type=click.Choice(["benchmark", "subject"]), default="benchmark", show_default=True,
              help="One column per benchmark, or per benchmark and subject label.")
@click.option("--benchmark", metavar="NAME", help="Only this benchmark.")
@click.option("--subject", metavar="LABEL", help="Only this subject label (e.g. 보험학); implies --by subject.")
@click.option("--since", metavar="DATE", help="Only runs finished on or after DATE (YYYY-MM-DD, UTC).")
@click.option("--all-runs", is_flag=True, help="Every run, not only each model's latest successful one.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the rows as CSV.")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...]} as JSON.')
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the page as one self-contained HTML file (no external resource; opens offline).")
@store_options
def leaderboard(by, benchmark, subject, since, all_runs, as_csv, as_json, html_path, store, output_dir):
    """Models x benchmarks (x subject labels with --by subject): each model's latest successful run by default."""
    from evalchemy.store.queries import leaderboard as query, reader

    if as_csv and as_json:
        raise UsageError("--csv and --json cannot be combined: pick one")
    url = _url(store, output_dir)
    with reader(url) as connection:
        rows = query(connection, benchmark=benchmark, subject=subject, by_subject=by == "subject",
                     since=since, all_runs=all_runs)
    if html_path is not None:
        from evalchemy.reports import pages

        page = pages.leaderboard_html({"rows": [asdict(r) for r in rows]})
        click.echo(f"leaderboard page: {pages.write_page(html_path, page)}", err=True)
    if as_json:
        click.echo(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2, ensure_ascii=False))
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=LEADER_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
        return
    if not rows:
        click.echo("no scores match: every run is failed, or the filters leave nothing", err=True)
        return
    columns = sorted({(r.benchmark, r.subject) for r in rows}, key=lambda c: (c[0], c[1] or ""))
    lines: dict[tuple, dict] = {}
    for r in rows:
        lines.setdefault((r.model, r.run_id), {})[(r.benchmark, r.subject)] = r
    order = sorted(lines, key=lambda k: (-sum(x.value for x in lines[k].values()) / len(lines[k]), k[0] or ""))
    table = Table(title="Leaderboard" + (f": {subject}" if subject else ""))
    for column in ("#", "model", "run id"):
        table.add_column(column)
    for bench, label in columns:
        table.add_column(f"{bench} / {label}" if label else bench, justify="right")
    for position, key in enumerate(order, 1):
        cells = lines[key]
        table.add_row(str(position), key[0] or "", key[1],
                      *(_leader_cell(cells.get(c)) for c in columns))
    _console().print(table)


def _leader_cell(row) -> str:
    if row is None:
        return ""
    return _num(row.value) + (f" ± {row.stderr:.4f}" if row.stderr is not None else "")


@group.command(cls=EvalchemyCommand, context_settings=SETTINGS)
@click.option("--model", required=True, metavar="NAME", help="The served model name the runs recorded.")
@click.option("--benchmark", metavar="NAME", help="Only this benchmark.")
@click.option("--json", "as_json", is_flag=True, help='Print {"model": ..., "rows": [...]} as JSON.')
@store_options
def history(model, benchmark, as_json, store, output_dir):
    """The score of each run of a model over time; failed runs are shown as such."""
    from evalchemy.store.queries import history as query, reader

    url = _url(store, output_dir)
    with reader(url) as connection, _hint_when_missing():
        rows = query(connection, model, benchmark)
    if as_json:
        click.echo(json.dumps({"model": model, "rows": [asdict(r) for r in rows]}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"History of {model}")
    for column in ("finished at", "run id", "run status", "benchmark", "status", "metric", "score", "n"):
        table.add_column(column, justify="right" if column in ("score", "n") else "left")
    for r in rows:
        table.add_row(r.finished_at or "", r.run_id, r.status, r.benchmark or "", r.benchmark_status or "",
                      r.metric or "", _num(r.value), "" if r.n is None else str(r.n))
    _console().print(table)
