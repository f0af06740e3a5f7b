"""The lm-eval worker process: ``python -m evalchemy.engines.lm_eval.worker``.

The runner starts one worker per run (and a fresh one after a timeout or crash). The worker imports lm-eval once,
builds one ``TaskManager`` over just the task folders the run needs, then runs jobs read as JSON lines from stdin,
one lm-eval invocation each. For each job it sends its output (stdout, stderr, logging) to that job's benchmark log,
saves lm-eval's output files as ``lm_eval run --output_path`` does, and answers one JSON line on the result pipe
(file descriptor named by ``EVALCHEMY_RESULT_FD``), which nothing else writes to. Its request counts also go, as
they change, to the runner's counters file (evalchemy/accounting.py), which outlives a killed worker.

The messages are ``evalchemy.engines.lm_eval.protocol``'s ``Job`` and ``Answer``.

Every job writes one compact score file per task into ``scores_dir`` (``evalchemy.results.scorefile``): lm-eval
is always asked for its samples, and its own samples files are saved only when the job's kwargs asked for them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
import os
import sys
import time
import traceback
from pathlib import Path

from evalchemy import proxy, redaction
from evalchemy.results.stats import sample_stats
from evalchemy.engines.lm_eval import failures, packed_samples, templates
from evalchemy.engines.lm_eval.accounting import RequestStats, no_progress_bars
from evalchemy.engines.lm_eval.protocol import Answer, Job
from evalchemy.backends.echo_check import ECHO_MODEL

RESULT_FD_ENV = "EVALCHEMY_RESULT_FD"


def _redirect_output(log_path: str) -> None:
    """Point fds 1 and 2 (and so print, tqdm and every logging handler on them) at ``log_path``."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _quietly(sys.stdout.flush)
    _quietly(sys.stderr.flush)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _setup_logging(stats: RequestStats) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler, stats]
    root.setLevel(os.environ.get("EVALCHEMY_WORKER_LOG_LEVEL", "INFO"))
    redaction.guard_logging()


class JobRunner:
    """Runs jobs in this process, one TaskManager per set of task folders (kept for the jobs that follow)."""

    def __init__(self) -> None:
        self._task_managers: dict[tuple[str, ...], object] = {}

    def task_manager(self, folders: tuple[str, ...]):
        from lm_eval.tasks import TaskManager

        if folders not in self._task_managers:
            self._task_managers[folders] = TaskManager(include_defaults=False, include_path=list(folders))
        return self._task_managers[folders]

    def run(self, job: Job) -> dict:
        """The answer's fields for a job that ran: results, files, score_files, duration_s, stats."""
        import lm_eval
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.utils import handle_non_serializable

        from evalchemy.results.scorefile import write_score_files

        started = time.monotonic()
        kwargs = dict(job.kwargs)
        wanted_samples = kwargs.get("log_samples")
        kwargs["log_samples"] = True  # score files and the stats layer need them; lm-eval's files only when asked
        if kwargs.get("model") == ECHO_MODEL:
            import evalchemy.engines.lm_eval.echo_model  # noqa: F401 - registers the model in lm-eval's registry
        tracker = EvaluationTracker(output_path=job.output_path)
        packed_samples.spill_folder = str(Path(job.log_path).parent)  # the run folder: its disk, watched by the run
        results = lm_eval.simple_evaluate(
            **kwargs,
            task_manager=self.task_manager(job.task_folders),
            evaluation_tracker=tracker,
        )
        if results is None:
            raise RuntimeError("lm-eval returned no results")
        samples = results.pop("samples", None)
        try:
            stats = sample_stats(samples, results.get("configs"))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:  # scores stand without them
            logging.getLogger(__name__).warning("stats layer: could not read lm-eval's samples (%s: %s); the "
                                                "summary keeps accuracy, n and the interval only",
                                                type(err).__name__, err)
            stats = {}
        score_files = write_score_files(job.scores_dir, samples, list(results.get("configs") or {})) \
            if samples and job.scores_dir else []
        samples = samples if wanted_samples else None
        config = results.get("config") or {}
        if isinstance(config.get("model_args"), dict):
            if "base_url" in config["model_args"]:
                config["model_args"] = {**config["model_args"], "base_url": job.credentials_free_base_url}
        elif "model_args" in config:
            config["model_args"] = "(removed: it may hold credentials)"
        # Round-trip through JSON so numpy numbers become plain ones, exactly as lm-eval writes them.
        results = json.loads(json.dumps(results, default=handle_non_serializable, ensure_ascii=False))
        output = Path(job.output_path)
        before = set(output.rglob("*")) if output.exists() else set()
        tracker.save_results_aggregated(results=results, samples=samples)
        if samples is not None:
            for task_name in results.get("configs", {}):
                if task_name in samples:
                    tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        files = tuple(sorted(str(p) for p in set(output.rglob("*")) - before if p.is_file()))
        return {"results": results, "files": files, "score_files": tuple(score_files),
                "duration_s": time.monotonic() - started, "stats": stats}


def _quietly(write) -> None:
    try:
        write()
    except OSError:
        pass


def main() -> int:
    result_fd = int(os.environ[RESULT_FD_ENV])
    # pyarrow (under datasets) keeps what it allocated preparing a dataset in its own pool (mimalloc here): 25 MB
    # more for the rest of the job, measured with a 50,000-row JSON task; the C library's pool hands it back
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # the key lm-eval sends never reaches the benchmark log: logging is filtered, and so is what is printed
    redaction.protect(os.environ.get("OPENAI_API_KEY"))
    sys.stdout = redaction.ScrubbingStream(sys.stdout)
    sys.stderr = redaction.ScrubbingStream(sys.stderr)
    answers = os.fdopen(result_fd, "w", encoding="utf-8", buffering=1)
    runner = JobRunner()
    no_progress_bars()
    templates.install()
    from evalchemy.engines.lm_eval import request_cache  # imports lm-eval

    request_cache.install()
    packed_samples.install()
    stats = RequestStats.from_env()
    stats.install()
    failures.install()
    from evalchemy.engines.lm_eval import fast_client  # registers the lean client with lm-eval

    fast_client.count_attempts(stats)
    proxy.install_from_env()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = Job.from_line(line)
        _redirect_output(job.log_path)
        _setup_logging(stats)
        stats.reset()
        try:
            answer = Answer(id=job.id, ok=True, **runner.run(job))
        except BaseException as err:  # noqa: BLE001 - reported to the runner, which records the failure
            _quietly(lambda: sys.stderr.write(redaction.scrub(traceback.format_exc())))  # the log may be on a full disk
            answer = Answer(id=job.id, ok=False, error=redaction.scrub(failures.describe(err, job)))
            if isinstance(err, KeyboardInterrupt):
                answers.write(redaction.scrub(replace(answer, requests=stats.as_dict()).to_json()) + "\n")
                return 130
        _quietly(sys.stdout.flush)
        _quietly(sys.stderr.flush)
        answers.write(redaction.scrub(replace(answer, requests=stats.as_dict()).to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
