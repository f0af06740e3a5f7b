"""Run a plan's benchmarks, one lm-eval invocation at a time, in a worker process with a wall-clock limit each."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evalchemy.engines.lm_eval.accounting import COUNTERS_FD_ENV, Counters
from evalchemy.execution.process import die_with_parent, stop_process_group
from evalchemy.plan import BenchmarkPlan, ModelSettings, TaskRun, simple_evaluate_kwargs
from evalchemy.proxy import PROXY_ENV
from evalchemy.engines.lm_eval.protocol import Answer, Job
from evalchemy.engines.lm_eval.worker import RESULT_FD_ENV
from evalchemy.results.scorefile import scores_dir

logger = logging.getLogger(__name__)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
KILL_GRACE_S = 3.0


@dataclass
class RunOutcome:
    """What happened to one TaskRun."""

    run: TaskRun
    status: str  # success | failed | timeout
    error: str | None = None
    results: dict | None = None
    files: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    requests: dict = field(default_factory=dict)  # RequestStats of the worker (from its counters file if it died)
    stats: dict = field(default_factory=dict)  # per-sample counts for the summary's stats layer


class WorkerCrashed(Exception):
    pass


class WorkerTimeout(Exception):
    pass


class WorkerProcess:
    """One ``python -m evalchemy.engines.lm_eval.worker`` process in its own process group."""

    def __init__(self, env: dict[str, str], boot_log: Path, cwd: Path | None = None, python: str | None = None):
        self.env = env
        self.python = python or sys.executable  # a checkpoint backend's engine Python (with torch), else ours
        self.cwd = cwd
        self.boot_log = boot_log
        self.proc: subprocess.Popen | None = None
        self._answers = None
        self._buffer = b""
        self.counters = Counters()  # the current job's request counts; readable after the worker is gone

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**self.env, RESULT_FD_ENV: str(write_fd), COUNTERS_FD_ENV: str(self.counters.fd)}
        with open(self.boot_log, "ab") as boot:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [self.python, "-m", "evalchemy.engines.lm_eval.worker"],
                stdin=subprocess.PIPE,
                stdout=boot,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(write_fd, self.counters.fd),
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks
                cwd=self.cwd,
            )
        os.close(write_fd)
        self._answers = read_fd
        self._buffer = b""
        logger.debug("started worker pid %d", self.proc.pid)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def submit(self, job: Job, timeout_s: float) -> Answer:
        if not self.alive:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.counters.reset()
        try:
            self.proc.stdin.write(job.to_line())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerCrashed(self._exit_text()) from None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerTimeout()
            ready, _, _ = select.select([self._answers], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise WorkerCrashed(self._exit_text())
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return Answer.from_line(line)

    def _exit_text(self) -> str:
        if self.proc is None:
            return "the worker did not start"
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the worker stopped answering"
        if code < 0:
            return f"the lm-eval worker was killed by {signal.Signals(-code).name}"
        return f"the lm-eval worker exited with code {code}"

    def stop(self) -> None:
        """Terminate the worker and everything it started; idempotent."""
        proc, self.proc = self.proc, None
        if self._answers is not None:
            os.close(self._answers)
            self._answers = None
        if proc is None:
            return
        stop_process_group(proc, KILL_GRACE_S)
        if proc.stdin:
            try:
                proc.stdin.close()
            except OSError:
                pass


def worker_env(gpu: str | None, log_level: str, api_key: str | None = None, online: bool = False,
               proxy: str | None = None) -> dict[str, str]:
    """The worker's environment: offline (unless ``online``), its GPUs, the API key where lm-eval reads it, and the
    route to the endpoint (``proxy``)."""
    env = {k: v for k, v in os.environ.items() if k != PROXY_ENV}
    if proxy:
        env[PROXY_ENV] = proxy
    if online:
        for name in OFFLINE_ENV:
            if name.endswith("OFFLINE"):
                env.pop(name, None)
        env["TOKENIZERS_PARALLELISM"] = OFFLINE_ENV["TOKENIZERS_PARALLELISM"]
    else:
        env.update(OFFLINE_ENV)
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    env["EVALCHEMY_WORKER_LOG_LEVEL"] = "DEBUG" if log_level == "DEBUG" else "INFO"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    src_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_task(worker: WorkerProcess, run: TaskRun, model: ModelSettings, run_dir: Path, log_path: Path,
             public_base_url: str, use_cache: str | None = None, max_failed_requests: int = 0) -> RunOutcome:
    """One lm-eval invocation through the worker; a timeout or crash kills the worker (the next job restarts it)."""
    output_path = run_dir / run.output_dir
    job = Job(id=f"{run.benchmark}/{run.entry}", log_path=str(log_path), output_path=str(output_path),
              kwargs=simple_evaluate_kwargs(run, model, use_cache), task_folders=tuple(run.task_folders),
              credentials_free_base_url=public_base_url, scores_dir=str(scores_dir(run_dir, run.benchmark)))
    started = time.monotonic()
    try:
        answer = worker.submit(job, timeout_s=run.timeout)
    except WorkerTimeout:
        worker.stop()
        return RunOutcome(run, "timeout", error=f"timed out after {run.timeout} s (tasks.{run.entry}.timeout)",
                          duration_s=time.monotonic() - started, requests=worker.counters.read())
    except WorkerCrashed as err:
        worker.stop()
        return RunOutcome(run, "failed", error=str(err), duration_s=time.monotonic() - started,
                          requests=worker.counters.read())
    duration = time.monotonic() - started
    requests = answer.requests
    if not answer.ok:
        return RunOutcome(run, "failed", error=answer.error or "lm-eval failed", duration_s=duration,
                          requests=requests)
    outcome = RunOutcome(run, "success", results=answer.results, files=list(answer.files),
                         duration_s=duration, requests=requests, stats=answer.stats)
    error = empty_answer_error(requests, max_failed_requests)
    if error:
        outcome.status, outcome.error = "failed", error
    elif requests.get("empty_answers"):
        logger.warning("%s: %d of %d generation(s) came back empty (the model's own empty answers count as wrong)",
                       run.entry, requests["empty_answers"], requests.get("answers", 0))
    return outcome


def empty_answer_error(requests: dict, allowed: int) -> str | None:
    """Empty answers that fail a job: answers with no text at all (null: the endpoint's failure), or every
    generation of the job empty (a server or template that cannot answer). A model that answers some questions with
    nothing is scored as it answered; the summary still counts those answers."""
    empty, answers, null = (requests.get(k, 0) for k in ("empty_answers", "answers", "null_answers"))
    failing = empty if answers and empty >= answers else null
    if failing > allowed:
        return (f"{failing} request(s) got an empty answer from the endpoint (allowed: {allowed}, "
                "--max-failed-requests); the scores would count them as wrong")
    return None


def run_benchmark(worker: WorkerProcess, bench: BenchmarkPlan, model: ModelSettings, run_dir: Path,
                  public_base_url: str, outcomes: list[RunOutcome], on_run_done=None,
                  use_cache: str | None = None, max_failed_requests: int = 0) -> None:
    """Run the benchmark's invocations in order, appending each outcome to ``outcomes`` as it finishes (so an
    interruption keeps what was done)."""
    log_path = run_dir / f"{bench.name}_benchmark.log"
    for run in bench.runs:
        logger.info("benchmark %s: running %s (lm-eval tasks: %s)", bench.name, run.entry, ", ".join(run.tasks))
        outcome = run_task(worker, run, model, run_dir, log_path, public_base_url, use_cache, max_failed_requests)
        if outcome.status == "success":
            logger.info("benchmark %s: %s finished in %.1f s", bench.name, run.entry, outcome.duration_s)
        else:
            logger.error("benchmark %s: %s %s: %s (details: %s)", bench.name, run.entry, outcome.status,
                         outcome.error, log_path.name)
        outcomes.append(outcome)
        if on_run_done:
            on_run_done(outcome)
