"""The lm-eval worker process: ``python -m evalchemy.worker``.

The runner starts one worker per run (and a fresh one after a timeout or crash). The worker imports lm-eval once,
builds one ``TaskManager`` over just the task folders the run needs, then runs jobs read as JSON lines from stdin,
one lm-eval invocation each. For each job it sends its output (stdout, stderr, logging) to that job's benchmark log,
saves lm-eval's output files as ``lm_eval run --output_path`` does, and answers one JSON line on the result pipe
(file descriptor named by ``EVALCHEMY_RESULT_FD``), which nothing else writes to.

Job:    {"id", "log_path", "output_path", "kwargs", "task_folders", "credentials_free_base_url"}
Answer: {"id", "ok": bool, "error": str | None, "results": dict | None, "files": [str], "duration_s": float,
         "requests": {"sent", "failed_attempts", "empty_answers", "truncated_prompts"}}
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from evalchemy.echo import ECHO_MODEL

RESULT_FD_ENV = "EVALCHEMY_RESULT_FD"


class RequestStats(logging.Handler):
    """What one job asked of the endpoint: HTTP attempts, failed attempts (lm-eval retries them; a request whose
    every attempt fails fails the job), answers that came back empty, and prompts lm-eval truncated to max_length.
    Attempts are counted by wrapping lm-eval's request methods; the last two from lm-eval's own warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reset()

    def reset(self) -> None:
        self.sent = self.failed = self.empty = self.truncated = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "returned null content" in message:
            self.empty += 1
        elif "truncat" in message.lower():
            self.truncated += 1

    def as_dict(self) -> dict:
        return {"sent": self.sent, "failed_attempts": self.failed, "empty_answers": self.empty,
                "truncated_prompts": self.truncated}

    def counting(self, method):
        stats = self
        if inspect.iscoroutinefunction(method):
            @functools.wraps(method)
            async def wrapper(*args, **kwargs):
                stats.sent += 1
                try:
                    return await method(*args, **kwargs)
                except BaseException:
                    stats.failed += 1
                    raise
        else:
            @functools.wraps(method)
            def wrapper(*args, **kwargs):
                stats.sent += 1
                try:
                    return method(*args, **kwargs)
                except BaseException:
                    stats.failed += 1
                    raise
        return wrapper

    def install(self) -> None:
        from lm_eval.models.api_models import TemplateAPI

        for name in ("model_call", "amodel_call"):
            setattr(TemplateAPI, name, self.counting(getattr(TemplateAPI, name)))


def _redirect_output(log_path: str) -> None:
    """Point fds 1 and 2 (and so print, tqdm and every logging handler on them) at ``log_path``."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _setup_logging(stats: RequestStats) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler, stats]
    root.setLevel(os.environ.get("EVALCHEMY_WORKER_LOG_LEVEL", "INFO"))


class Worker:
    def __init__(self) -> None:
        self._task_managers: dict[tuple[str, ...], object] = {}

    def task_manager(self, folders: tuple[str, ...]):
        from lm_eval.tasks import TaskManager

        if folders not in self._task_managers:
            self._task_managers[folders] = TaskManager(include_defaults=False, include_path=list(folders))
        return self._task_managers[folders]

    def run(self, job: dict) -> dict:
        import lm_eval
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.utils import handle_non_serializable

        started = time.monotonic()
        kwargs = dict(job["kwargs"])
        if kwargs.get("model") == ECHO_MODEL:
            import evalchemy.echo_lm_eval  # noqa: F401 - registers the model in lm-eval's registry
        tracker = EvaluationTracker(output_path=job["output_path"])
        results = lm_eval.simple_evaluate(
            **kwargs,
            task_manager=self.task_manager(tuple(job["task_folders"])),
            evaluation_tracker=tracker,
        )
        if results is None:
            raise RuntimeError("lm-eval returned no results")
        samples = results.pop("samples", None) if kwargs.get("log_samples") else None
        results.pop("samples", None)
        config = results.get("config") or {}
        if isinstance(config.get("model_args"), dict):
            config["model_args"] = {**config["model_args"], "base_url": job["credentials_free_base_url"]}
        elif "model_args" in config:
            config["model_args"] = "(removed: it may hold credentials)"
        # Round-trip through JSON so numpy numbers become plain ones, exactly as lm-eval writes them.
        results = json.loads(json.dumps(results, default=handle_non_serializable, ensure_ascii=False))
        before = set(Path(job["output_path"]).rglob("*")) if Path(job["output_path"]).exists() else set()
        tracker.save_results_aggregated(results=results, samples=samples)
        if samples is not None:
            for task_name in results.get("configs", {}):
                if task_name in samples:
                    tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        files = sorted(str(p) for p in set(Path(job["output_path"]).rglob("*")) - before if p.is_file())
        return {"results": results, "files": files, "duration_s": time.monotonic() - started}


def main() -> int:
    result_fd = int(os.environ[RESULT_FD_ENV])
    answers = os.fdopen(result_fd, "w", encoding="utf-8", buffering=1)
    worker = Worker()
    stats = RequestStats()
    stats.install()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        _redirect_output(job["log_path"])
        _setup_logging(stats)
        stats.reset()
        answer: dict = {"id": job["id"], "ok": False, "error": None, "results": None, "files": [],
                        "requests": stats.as_dict()}
        try:
            answer.update(worker.run(job), ok=True)
        except BaseException as err:  # noqa: BLE001 - reported to the runner, which records the failure
            traceback.print_exc()
            message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            answer["error"] = f"{type(err).__name__}: {message}" if message else type(err).__name__
            if isinstance(err, KeyboardInterrupt):
                answers.write(json.dumps(answer) + "\n")
                return 130
        answer["requests"] = stats.as_dict()
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps(answer, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
