"""``run_evalchemy.sh report RUN_ID``: write a run's report.html and report.md from its summary."""

from __future__ import annotations

from pathlib import Path

import click

REPORT_EXIT_CODES = """\b
Exit codes:
  0    report written
  1    unexpected internal error
  2    no such run folder or no readable summary in it
"""


def run_folder(run_id: str, output_dir: str | None) -> Path:
    """RUN_ID under --output (default: results in the project folder), or a path to a run folder."""
    from evalchemy.cli.common import home

    given = Path(run_id).expanduser()
    if output_dir is None and (given.is_dir() and (len(given.parts) > 1 or given.is_absolute())):
        return given.resolve()
    output = Path(output_dir).expanduser() if output_dir else home() / "results"
    return (output / run_id).resolve()


def report_command():
    from evalchemy.cli.common import EvalchemyCommand, setup_console_logging

    @click.command("report", cls=EvalchemyCommand, epilog=REPORT_EXIT_CODES,
                   context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
    @click.argument("run_id", metavar="RUN_ID")
    @click.option("--output", "output_dir", metavar="DIR",
                  help="Results folder the run is in. Default: results. RUN_ID may also be a run folder's path.")
    @click.option("--max-errors", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
                  help="Error cases (question, expected, answered) to show, from tasks that logged samples.")
    def report(run_id, output_dir, max_errors):
        """Write report.html and report.md into a run's folder from its summary.

        The HTML page is one file with no external resource (inline CSS and SVG charts): it opens from disk on a
        machine with no network. Prints the two paths on stdout.
        """
        from evalchemy.reports.run_report import write_run_report

        setup_console_logging("WARNING")
        files = write_run_report(run_folder(run_id, output_dir), max_errors=max_errors)
        click.echo(str(files.html))
        click.echo(str(files.markdown))

    return report


def register(group: click.Group) -> None:
    group.add_command(report_command())
