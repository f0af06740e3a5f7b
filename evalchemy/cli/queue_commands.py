"""Runs on many machines: ``submit`` (queue a run on Celery + Redis), ``worker`` (execute queued runs on this box),
``status``, ``queue`` and ``cancel`` (from the store, which holds every queued run's state)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from pathlib import Path

import click

from evalchemy.cli.common import EvalchemyCommand, home, setup_console_logging
from evalchemy.errors import UsageError

SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
QUEUE_EXIT_CODES = """\b
Exit codes:
  0    done
  1    unexpected internal error
  2    usage or config error, or the store cannot be reached (nothing was queued)
  3    the broker (Redis) cannot be reached (nothing was queued)
"""
STORE_HELP = ("Results store shared by every box, which holds the queued runs' state: postgresql://USER@HOST:PORT/DB "
              "(or a SQLite file every box sees). Default: $EVALCHEMY_STORE.")


def _queue_option(func):
    return click.option("--queue", "queue_name", default="evalchemy", show_default=True, metavar="NAME",
                        help="Celery queue.")(func)


def _broker_option(func):
    return click.option("--broker", metavar="URL",
                        help="Redis broker, e.g. redis://queue-host:6379/0. Default: $EVALCHEMY_BROKER.")(func)


def _store_url(value: str | None) -> str:
    import os

    from evalchemy.store.url import STORE_ENV, resolve_url

    if not value and not os.environ.get(STORE_ENV):
        raise UsageError("no store: pass --store postgresql://USER@HOST:PORT/DB (the store every worker records "
                         "into) or set EVALCHEMY_STORE")
    return resolve_url(value, home() / "results")


def _option_values(args: list[str], name: str) -> list[str]:
    values = []
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _without(args: list[str], names: tuple[str, ...]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(name + "=") for name in names):
            continue
        kept.append(arg)
    return kept


def _refuse_credentials(args: list[str]) -> None:
    """What travels through the broker holds no credential: a worker reads keys from its own environment."""
    from urllib.parse import urlsplit

    for name in ("--endpoint", "--proxy"):
        for value in _option_values(args, name):
            try:
                userinfo = "@" in urlsplit(value).netloc
            except ValueError:
                userinfo = False
            if userinfo:
                raise UsageError(f"{name} with user:password cannot be queued (the queue carries no credential): "
                                 "give the worker the URL with --endpoint on its box")
    if _option_values(args, "--notify-url"):
        raise UsageError("--notify-url cannot be queued (its URL may hold a token): notify from the worker's box")


@click.command("submit", cls=EvalchemyCommand, epilog=QUEUE_EXIT_CODES,
               context_settings={**SETTINGS, "ignore_unknown_options": True, "allow_interspersed_args": True})
@_queue_option
@_broker_option
@click.option("--store", metavar="URL", help=STORE_HELP)
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[RUN FLAGS]...")
def submit(queue_name, broker, store, run_args):
    """Queue a run for the workers: RUN FLAGS are a run's (--config, --model, --endpoint, --run-id ...),
    checked exactly as a run checks them (exit 2, nothing queued). The config's content and the flags travel; no
    credential does (a worker reads API keys from its own environment; --output, --data-dir, --include-path are
    the worker's). Records the run as PENDING in the store and prints its run id.
    """
    from evalchemy.execution import runner
    from evalchemy.queue import broker as broker_mod
    from evalchemy.queue import state

    setup_console_logging("WARNING")
    args = list(run_args)
    for mode in ("--dry-run", "--list-benchmarks", "--validate-config", "--fresh", "--report"):
        if mode in args:
            raise UsageError(f"{mode} is not for a queued run: run it with run_evalchemy.sh {mode}")
    _refuse_credentials(args)
    url = broker_mod.broker_url(broker)
    store_url = _store_url(store)
    run_ids = _option_values(args, "--run-id")
    run_id = run_ids[-1] if run_ids else runner.default_run_id()
    args = _without(args, ("--run-id",))
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the run id only
        try:
            code = _RUN_COMMAND[0].main(args=[*args, "--run-id", run_id, "--validate-config"], prog_name="run_evalchemy.sh submit",
                            standalone_mode=False)
        except click.ClickException as err:
            err.show()
            raise SystemExit(2) from None
    if code:
        raise SystemExit(code)
    configs = _option_values(args, "--config")
    config_file = Path(configs[-1]) if configs else home() / "configs" / "eval_config.json"
    payload = {"run_id": run_id, "config_name": config_file.name,
               "config": config_file.read_text(encoding="utf-8"),
               "args": _without(args, ("--config", "--output", "--store", "--data-dir", "--include-path")),
               "submitted_from": socket.gethostname()}
    app = broker_mod.make_app(url)
    broker_mod.check_reachable(app, url)
    queue = state.Store(store_url)
    queue.add(run_id, queue_name)
    try:
        broker_mod.publish(app, url, payload, queue_name)
    except Exception:
        queue.remove(run_id)
        raise
    finally:
        queue.close()
    click.echo(f"queued {run_id} on {queue_name} ({broker_mod.display(url)})", err=True)
    click.echo(run_id)


@click.command("worker", cls=EvalchemyCommand, epilog="""\b
Exit codes:
  0    stopped (SIGTERM/SIGINT: the run in progress finishes first; a second signal stops at once)
  1    unexpected internal error
  2    usage error
""", context_settings=SETTINGS)
@_queue_option
@_broker_option
@click.option("--store", metavar="URL", help=STORE_HELP)
@click.option("--endpoint", "endpoints", multiple=True, metavar="URL",
              help="This box's vLLM server, for runs submitted without --endpoint (repeatable).")
@click.option("--tokenizer", metavar="PATH", help="Tokenizer for runs submitted without --tokenizer.")
@click.option("--include-path", "include_paths", multiple=True, metavar="DIR",
              help="Extra folder of lm-eval task YAMLs on this box (repeatable).")
@click.option("--data-dir", metavar="DIR", help="The tasks' local datasets on this box.")
@click.option("--output", "output_dir", metavar="DIR", help="Results folder on this box. Default: results.")
@click.option("--name", metavar="NAME", help="Worker name (Celery's). Default: evalchemy@HOSTNAME.")
def worker(queue_name, broker, store, endpoints, tokenizer, include_paths, data_dir, output_dir, name):
    """Execute queued runs on this box, one at a time, with the same runner as run_evalchemy.sh: results in
    OUTPUT/RUN_ID/, the run recorded in the shared store. A run is acknowledged when it ends, so a worker killed
    mid-run leaves it on the queue for another worker (see README: Many GPU boxes).
    """
    from evalchemy.queue import broker as broker_mod
    from evalchemy.queue import work

    setup_console_logging("INFO")
    url = broker_mod.broker_url(broker)
    store_url = _store_url(store)
    name = name or f"evalchemy@{socket.gethostname()}"
    output = (Path(output_dir) if output_dir else home() / "results").resolve()
    work.configure(work.Settings(store=store_url, output=output, endpoints=tuple(endpoints), tokenizer=tokenizer,
                                 include_paths=tuple(str(Path(p).resolve()) for p in include_paths),
                                 data_dir=str(Path(data_dir).resolve()) if data_dir else None, name=name))
    from evalchemy.queue import state

    state.Store(store_url).close()
    app = broker_mod.make_app(url)
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1", "-Q", queue_name,
                     "-n", name, "--loglevel=INFO", "--without-gossip", "--without-mingle"])


def _rows(store, run_ids, states=()):
    from evalchemy.queue import state

    queue = state.Store(_store_url(store))
    try:
        rows = queue.rows(tuple(run_ids), states)
    finally:
        queue.close()
    missing = sorted(set(run_ids) - {r["run_id"] for r in rows})
    if missing:
        raise UsageError(f"no submitted run {', '.join(missing)} in the store: see `status` for every run")
    return rows


HEADINGS = ["RUN ID", "STATE", "HOST", "STATUS", "EXIT", "SUBMITTED (UTC)", "STARTED", "FINISHED"]


def _print(rows, as_json: bool) -> None:
    from evalchemy.queue import state

    shown = [state.public(r) for r in rows]
    if as_json:
        click.echo(json.dumps({"runs": shown}, ensure_ascii=False, indent=2))
        return
    if not shown:
        click.echo("no submitted runs", err=True)
        return
    table = [HEADINGS] + [[str(row[k]) if row[k] is not None else "-" for k in state.FIELDS] for row in shown]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADINGS))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


@click.command("status", cls=EvalchemyCommand, context_settings=SETTINGS)
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option("--store", metavar="URL", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON: {\"runs\": [...]}, status null until a run ends.")
def status(run_ids, store, as_json):
    """Each submitted run (or the ones named): state (PENDING, STARTED, SUCCESS, FAILURE, REVOKED), host, status,
    exit code, submitted/started/finished times (UTC)."""
    _print(_rows(store, run_ids), as_json)


@click.command("queue", cls=EvalchemyCommand, context_settings=SETTINGS)
@click.option("--store", metavar="URL", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON, as status --json.")
def queue_command(store, as_json):
    """The runs waiting (PENDING) and running (STARTED)."""
    _print(_rows(store, (), ("PENDING", "STARTED")), as_json)


@click.command("cancel", cls=EvalchemyCommand, context_settings=SETTINGS)
@click.argument("run_id")
@_broker_option
@click.option("--store", metavar="URL", help=STORE_HELP)
def cancel(run_id, broker, store):
    """Cancel a run: a queued one is revoked; a running one is stopped by its worker (SIGTERM, so its summary
    says interrupted) within the worker's heartbeat (10 s)."""
    from evalchemy.queue import state

    queue = state.Store(_store_url(store))
    try:
        row = queue.cancel(run_id)
    finally:
        queue.close()
    if broker or __import__("os").environ.get("EVALCHEMY_BROKER"):
        from evalchemy.queue import broker as broker_mod

        url = broker_mod.broker_url(broker)
        try:
            broker_mod.make_app(url).control.revoke(run_id)
        except Exception as err:  # noqa: BLE001 - the store's flag is what workers obey
            click.echo(f"warning: broker {broker_mod.display(url)}: revoke not sent ({err}); the store's cancel "
                       "flag still stops the run", err=True)
    if row["state"] == state.REVOKED:
        click.echo(f"{run_id}: revoked (it had not started)", err=True)
    elif row["state"] == state.STARTED:
        click.echo(f"{run_id}: running on {row['host']}: its worker stops it", err=True)
    else:
        click.echo(f"{run_id}: already ended ({row['state']})", err=True)


_RUN_COMMAND: list[click.Command] = []  # the run command (cli.app), which checks a submitted run's flags


def register(group: click.Group, run_command: click.Command) -> None:
    _RUN_COMMAND[:] = [run_command]
    for command in (submit, worker, status, queue_command, cancel):
        group.add_command(command)
