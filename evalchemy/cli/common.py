"""What every command shares: the project folder, the data-dir option, console and run-log set-up, config loading,
and the one place that turns the project's errors into messages and exit codes (EvalchemyCommand)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from evalchemy import redaction
from evalchemy.errors import (
    EXIT_INTERNAL,
    EXIT_SIGINT,
    ConfigError,
    EvalchemyError,
    UsageError,
    cli_words,
)

logger = logging.getLogger("evalchemy")

EXIT_CODES_HELP = """\b
Exit codes:
  0    every benchmark succeeded (or a check passed)
  1    unexpected internal error
  2    usage or config error (nothing was run or written)
  3    preflight failed: endpoint, model, tokenizer or data unusable; nothing was run
  4    the run finished but at least one benchmark failed or timed out (or was lost to a full disk)
  5    another run holds the lock on the output folder
  6    compare --fail-on-regression: a score dropped by more than the threshold, beyond noise
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM
"""

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def home() -> Path:
    """The project folder: defaults (config, results, tasks) live there, whatever the working directory."""
    return Path(os.environ.get("EVALCHEMY_HOME") or os.getcwd())


def data_dir_option(func):
    return click.option("--data-dir", metavar="DIR",
                        help="Where the tasks' local datasets are (dataset.path is relative to it). Default: "
                             "$EVALCHEMY_DATA_DIR, else data/benchmarks.")(func)


def resolve_data_dir(value: str | None) -> Path:
    """``--data-dir``, else ``$EVALCHEMY_DATA_DIR``, else ``data/benchmarks`` in the project folder."""
    chosen = value or os.environ.get("EVALCHEMY_DATA_DIR")
    return (Path(chosen).expanduser() if chosen else home() / "data" / "benchmarks").resolve()


def _stderr_console() -> Console:
    """Rich on stderr; under cron (no terminal) a fixed 120 columns so tables are not squeezed."""
    return Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 120)


def setup_console_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=_stderr_console(), show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(level)
    root.handlers[:] = [handler]
    redaction.guard_logging()


def attach_run_logs(run_dir: Path, run_id: str, level: str) -> list:
    """The run log (everything at --log-level) and the errors log (warnings and errors) in the run folder."""
    from evalchemy.execution.storage import RunLogHandler

    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers = []
    for path, file_level in ((run_dir / f"evalchemy_{run_id}.log", level),
                             (run_dir / f"evalchemy_errors_{run_id}.log", "WARNING")):
        handler = RunLogHandler(path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(file_level)
        root.addHandler(handler)
        handlers.append(handler)
    redaction.guard_logging()
    return handlers


def _load(config_path: Path, include_paths: tuple[Path, ...]):
    from evalchemy.config import model as config_mod
    from evalchemy.engines.lm_eval import taskindex

    index = taskindex.load_index(list(include_paths))
    return config_mod.load_config(config_path.resolve() if config_path.exists() else config_path, index), index


def _include_paths(extra: tuple[str, ...]) -> tuple[Path, ...]:
    paths = []
    bundled = home() / "tasks"
    if bundled.is_dir():
        paths.append(bundled.resolve())
    for item in extra:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise UsageError(f"--include-path {item}: not a folder")
        paths.append(path.resolve())
    return tuple(paths)


class EvalchemyCommand(click.Command):
    """Turns the project's errors into messages on stderr and their exit codes (the only place that does)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            click.echo(f"error: {cli_words(err.message)}", err=True)
            click.echo("(exit code 2: config error; nothing was run)", err=True)
            ctx.exit(err.exit_code)
        except EvalchemyError as err:
            click.echo(f"error: {redaction.scrub(cli_words(err.message))}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_SIGINT)
        except BrokenPipeError:  # stdout closed early (| head): nothing more to say
            sys.stderr.close()
            ctx.exit(0)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception:  # noqa: BLE001 - a bug: exit code 1 with the traceback
            logger.exception("internal error (please report it with this traceback)")
            ctx.exit(EXIT_INTERNAL)
