"""What a worker does with one queued run: claim it in the store, run it with the same command line as
``run_evalchemy.sh`` (a child process: the run's own signal handling, logs, lock, summary and store record),
keep the claim alive (heartbeat), stop the run cleanly when it is cancelled, and record how it ended.

The child is ``python -m evalchemy`` with the worker's own flags (--output, --store, --endpoint, --tokenizer,
--include-path, --data-dir) and the submitted ones; it reads API keys from the worker's environment. It dies with
the worker (kill -9 included), so a run is never left going on a box whose worker is gone."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evalchemy.errors import StoreError
from evalchemy.queue import state

logger = logging.getLogger("evalchemy.queue")

BUSY, DONE, DROPPED = "busy", "done", "dropped"


@dataclass
class Settings:
    """The worker's box: set once by the `worker` command before Celery starts."""

    store: str
    output: Path
    endpoints: tuple[str, ...] = ()
    tokenizer: str | None = None
    include_paths: tuple[str, ...] = ()
    data_dir: str | None = None
    name: str = ""
    heartbeat_s: float = field(default_factory=lambda: float(os.environ.get("EVALCHEMY_QUEUE_HEARTBEAT_S", 10)))
    stale_s: float = field(default_factory=lambda: float(os.environ.get("EVALCHEMY_QUEUE_STALE_S", 60)))
    retry_s: float = field(default_factory=lambda: float(os.environ.get("EVALCHEMY_QUEUE_RETRY_S", 60)))


_settings: Settings | None = None


def configure(value: Settings) -> None:
    global _settings
    _settings = value


def settings() -> Settings:
    if _settings is None:
        raise RuntimeError("the queue task runs only in `run_evalchemy.sh worker`")
    return _settings


# flags that name things on the submitting box: the worker's own replace them
BOX_LOCAL = ("--output", "--store", "--data-dir", "--include-path", "--config", "--run-id")


def command(payload: dict, config_file: Path, conf: Settings) -> list[str]:
    args = list(payload["args"])
    argv = [sys.executable, "-m", "evalchemy", "--config", str(config_file), "--run-id", payload["run_id"],
            "--output", str(conf.output), "--store", conf.store]
    if conf.data_dir:
        argv += ["--data-dir", conf.data_dir]
    for path in conf.include_paths:
        argv += ["--include-path", path]
    if not any(a == "--endpoint" or a.startswith("--endpoint=") for a in args) and _takes_url(args, config_file):
        for endpoint in conf.endpoints:
            argv += ["--endpoint", endpoint]
    if conf.tokenizer and not any(a == "--tokenizer" or a.startswith("--tokenizer=") for a in args):
        argv += ["--tokenizer", conf.tokenizer]
    return argv + args


def _takes_url(args: list[str], config_file: Path) -> bool:
    """Whether the run's backend (``--backend``, else the config's ``model.backend``) reaches a server by URL: a
    checkpoint or the embedded model runs on the worker's box and takes none of its endpoints."""
    import json

    from evalchemy.backends.registry import BACKENDS

    name = None
    for i, arg in enumerate(args):
        if arg == "--backend" and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--backend="):
            name = arg.split("=", 1)[1]
    if name is None:
        try:
            section = json.loads(config_file.read_text(encoding="utf-8")).get("model") or {}
        except (OSError, ValueError, AttributeError):
            section = {}
        name = section.get("backend") if isinstance(section, dict) else None
    backend = BACKENDS.get(name) if isinstance(name, str) else None
    return backend is None or not backend.runs_here


def handle(payload: dict) -> str:
    conf = settings()
    run_id = payload["run_id"]
    store = state.Store(conf.store)
    try:
        claimed, row = store.claim(run_id, conf.name, conf.stale_s)
    except StoreError as err:
        logger.error("run %s: %s; the run stays on the queue", run_id, err)
        return BUSY
    if row is None:
        logger.warning("run %s is not in the store %s: dropped (submitted to another store?)", run_id, conf.store)
        return DROPPED
    if not claimed:
        if row["state"] in state.ENDED or row["cancel"]:
            logger.info("run %s already ended (%s): nothing to do", run_id, row["state"])
            return DONE
        logger.info("run %s is held by %s pid %s (heartbeat %.0f s ago): looking again in %.0f s", run_id,
                    row["host"], row["pid"], time.time() - (row["heartbeat"] or 0), conf.retry_s)
        return BUSY
    if row["state"] == state.STARTED:
        logger.warning("run %s: taking over from %s pid %s, whose worker is gone", run_id, row["host"], row["pid"])
    try:
        return _execute(payload, conf, store)
    finally:
        store.close()


def _execute(payload: dict, conf: Settings, store: state.Store) -> str:
    run_id = payload["run_id"]
    folder = conf.output / ".queue" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / payload["config_name"]
    config_file.write_text(payload["config"], encoding="utf-8")
    argv = command(payload, config_file, conf)
    logger.info("run %s: starting on %s", run_id, state.host_name())
    from evalchemy.execution.process import die_with_parent

    with open(folder / "worker.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,  # noqa: S603
                                preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl
        cancelled = False
        while True:
            try:
                proc.wait(timeout=conf.heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                if store.heartbeat(run_id) and not cancelled:
                    logger.info("run %s: cancelled, stopping it (SIGTERM)", run_id)
                    proc.send_signal(signal.SIGTERM)
                    cancelled = True
            except StoreError as err:
                logger.warning("run %s: heartbeat not recorded: %s", run_id, err)
    summary_path = conf.output / run_id / f"evalchemy_summary_{run_id}.json"
    status = None
    try:
        status = json.loads(summary_path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        logger.error("run %s: exit code %d and no summary (see %s)", run_id, proc.returncode, folder / "worker.log")
    ended = state.REVOKED if cancelled else state.SUCCESS if proc.returncode == 0 else state.FAILURE
    for attempt in range(1, 4):
        try:
            store.finish(run_id, ended, status, proc.returncode)
            break
        except StoreError as err:
            logger.error("run %s: end not recorded (try %d of 3): %s", run_id, attempt, err)
            time.sleep(2.0 * attempt)
    logger.info("run %s: %s (status %s, exit code %d)", run_id, ended, status, proc.returncode)
    return DONE
