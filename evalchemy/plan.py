"""Expand a validated config into the ordered list of lm-eval invocations a run makes.

The same ``TaskRun`` + ``ModelSettings`` pair gives both the ``lm_eval run ...`` command line that ``--dry-run``
prints and the keyword arguments the worker passes to ``lm_eval.simple_evaluate``, so what users copy is what runs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from evalchemy.config.model import PRIORITIES, Config, DatasetSpec, TaskEntry
from evalchemy.errors import UsageError

DEFAULT_TASK_TIMEOUT_S = 3 * 3600
# Prompts per request when neither the config nor --batch-size says: several prompts per request cut the client's
# per-request cost (scripts/bench.py: 400 requests at 50 ms, 16 in flight, took 1.90 s with 1 prompt per request and
# 1.29 s with 8; the ideal is 1.25 s), and vLLM schedules each prompt as its own sequence.
DEFAULT_BATCH_SIZE = 8
DEFAULT_CONCURRENCY = 16
DEFAULT_REQUEST_TIMEOUT_S = 120
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_LENGTH = 2048
LM_EVAL_MODEL = "local-completions"
FAST_MODEL = "evalchemy-completions"  # engines/lm_eval/fast_client.py; registered in the worker only
CLIENTS = ("evalchemy", "lm-eval")



@dataclass(frozen=True)
class ModelSettings:
    """What lm-eval's ``local-completions`` model gets (``--model_args``)."""

    base_url: str
    model: str | None
    tokenizer: str | None = None
    tokenizer_backend: str = "huggingface"
    tokenized_requests: bool = True
    num_concurrent: int = DEFAULT_CONCURRENCY
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: int = DEFAULT_REQUEST_TIMEOUT_S
    max_length: int = DEFAULT_MAX_LENGTH
    single_stream: bool = False  # the server takes one request at a time (the embedded model): no task overrides it
    lm_eval_model: str = LM_EVAL_MODEL  # echo.ECHO_MODEL when the server's echo omits end-of-text (echo.check)
    client: str = "evalchemy"  # "evalchemy": the lean client (not for the embedded model); "lm-eval": the stock one
    chat: bool = False  # chat messages: lm-eval applies the chat template (apply_chat_template)
    max_batch: int | None = None  # the most prompts per request the server takes (the probe found 1), else None
    local_args: tuple[tuple[str, str | int | bool], ...] | None = None  # a checkpoint's lm-eval model arguments

    @property
    def worker_model(self) -> str:
        """The lm-eval model type the worker runs: the echo-checked one when the echo check chose it, else the lean
        client (the printed ``lm_eval run`` line keeps the stock one, which gives the same results)."""
        if self.lm_eval_model != LM_EVAL_MODEL:
            return self.lm_eval_model
        return FAST_MODEL if self.client == "evalchemy" and not self.single_stream else LM_EVAL_MODEL

    def for_run(self, run: TaskRun) -> ModelSettings:
        """These settings with the task entry's own concurrency, if it has one."""
        if run.concurrency is None or self.single_stream:
            return self
        return replace(self, num_concurrent=run.concurrency)

    def batch_size(self, run: TaskRun) -> int:
        """Prompts per request for ``run``: its own, unless the server takes fewer."""
        return min(run.batch_size, self.max_batch) if self.max_batch else run.batch_size

    def model_args(self) -> dict[str, str | int | bool]:
        if self.local_args is not None:  # a checkpoint loaded in the worker: no server settings apply
            return dict(self.local_args)
        args: dict[str, str | int | bool] = {"base_url": self.base_url, "model": self.model or "MODEL"}
        if self.tokenizer:
            args["tokenizer"] = self.tokenizer
        args.update(
            tokenizer_backend=self.tokenizer_backend,
            tokenized_requests=self.tokenized_requests,
            num_concurrent=self.num_concurrent,
            max_retries=self.max_retries,
            timeout=self.timeout,
            max_length=self.max_length,
        )
        return args


@dataclass(frozen=True)
class TaskRun:
    """One lm-eval invocation: one config task entry (or one bare lm-eval task name) of a benchmark."""

    benchmark: str
    entry: str
    label: str
    tasks: tuple[str, ...]
    num_fewshot: int | None
    batch_size: int
    concurrency: int | None  # requests in flight for this entry; None: the run's (--concurrency or the default)
    limit: int | None
    log_samples: bool
    timeout: int
    metrics: tuple[str, ...]
    priority: str
    output_dir: str  # relative to the run folder
    include_paths: tuple[str, ...]  # folders with task YAMLs outside lm-eval's own
    task_folders: tuple[str, ...]  # every folder lm-eval needs to build these tasks (restricted TaskManager)
    needs_loglikelihood: bool
    dataset: DatasetSpec | None = None  # local KMMLU-format data this entry runs on
    data_path: str | None = None  # the dataset's path on this machine
    hub_copies: tuple[str, ...] = ()  # lm-eval tasks that read the copy of their hub dataset in the data folder


@dataclass
class BenchmarkPlan:
    name: str
    description: str
    enabled: bool
    priority: str
    runs: list[TaskRun] = field(default_factory=list)
    skip_reason: str | None = None


@dataclass
class Plan:
    benchmarks: list[BenchmarkPlan]
    data_dir: Path | None = None  # where dataset entries' relative paths point

    @property
    def to_run(self) -> list[BenchmarkPlan]:
        return [b for b in self.benchmarks if b.skip_reason is None]

    @property
    def needs_loglikelihood(self) -> bool:
        return any(run.needs_loglikelihood for bench in self.to_run for run in bench.runs)


def _entry_run(bench: str, entry: TaskEntry, batch_override: int | None, concurrency_override: int | None, index,
               include_paths, local_tasks: LocalTasks) -> TaskRun:
    folders: list[str] = []
    needs_ll = False
    data_path = None
    if entry.dataset is not None:
        from evalchemy.datasets import local as localdata, task_files

        data_path = localdata.resolve(local_tasks.data_dir, entry.dataset.path)
        folder = str(task_files.write_task_file(local_tasks.cache_dir, entry.name, data_path, entry.dataset.subset,
                                               entry.dataset.answers, write=local_tasks.write_files,
                                               mode=entry.dataset.mode))
        include_paths, folders, needs_ll = (folder,), [folder], entry.dataset.mode == "multiple_choice"
    for name in entry.tasks if entry.dataset is None else ():
        if index is not None:
            for folder in index.folders(name):
                if folder not in folders:
                    folders.append(folder)
            needs_ll = needs_ll or index.needs_loglikelihood(name)
        else:
            needs_ll = True
    hub_copies: tuple[str, ...] = ()
    if entry.dataset is None and index is not None:
        override = _hub_copy_overrides(entry, index, local_tasks)
        if override:
            folder, hub_copies = override
            folders.append(folder)  # last: its tasks replace lm-eval's own of the same name
            include_paths = (*include_paths, folder)
    user_includes = tuple(p for p in include_paths if any(f == p or f.startswith(p.rstrip("/") + "/") for f in folders))
    output_dir = entry.output_path or f"lm_eval/{bench}/{entry.name}"
    return TaskRun(
        benchmark=bench,
        entry=entry.name,
        label=entry.label or entry.name,
        tasks=entry.tasks,
        num_fewshot=entry.num_fewshot,
        batch_size=batch_override or entry.batch_size or DEFAULT_BATCH_SIZE,
        concurrency=concurrency_override or entry.concurrency,
        limit=entry.limit,
        log_samples=entry.log_samples,
        timeout=entry.timeout or DEFAULT_TASK_TIMEOUT_S,
        metrics=entry.metrics,
        priority=entry.priority,
        output_dir=str(PurePosixPath(output_dir)),
        include_paths=user_includes,
        task_folders=tuple(folders),
        needs_loglikelihood=needs_ll,
        dataset=entry.dataset,
        data_path=str(data_path) if data_path else None,
        hub_copies=hub_copies,
    )


def _hub_copy_overrides(entry: TaskEntry, index, local_tasks: LocalTasks) -> tuple[str, tuple[str, ...]] | None:
    """(folder of override task files, their task names) for the entry's lm-eval tasks whose hub dataset has a
    saved copy in the data folder; None when none has."""
    from evalchemy.datasets import hub as hubdata, local as localdata

    if not (local_tasks.data_dir / hubdata.HUB_DIR).is_dir():
        return None
    overrides: dict[str, str] = {}
    for hub in hubdata.hub_tasks(entry.tasks, index, local_tasks.home):
        try:
            splits = localdata.saved_splits(hubdata.hub_copy_dir(local_tasks.data_dir, hub.dataset_path,
                                                                   hub.dataset_name))
        except localdata.DataError:
            continue  # the data check reports a broken copy
        overrides[hub.task] = hubdata.hub_override_yaml(hub.task, hub.yaml, splits)
    if not overrides:
        return None
    return (str(hubdata.write_hub_overrides(local_tasks.cache_dir, overrides, write=local_tasks.write_files)),
            tuple(sorted(overrides)))


@dataclass(frozen=True)
class LocalTasks:
    """Where local datasets are (``dataset.path`` is relative to ``data_dir``), the project folder (relative
    ``dataset_path`` values of task YAMLs are read from it), and where the task files written for them go
    (content-addressed; ``write_files=False``: planned there but not written, for checks that write nothing)."""

    data_dir: Path
    home: Path
    cache_dir: Path = field(default_factory=lambda: _cache_dir())
    write_files: bool = True


def _cache_dir() -> Path:
    from evalchemy.engines.lm_eval.taskindex import cache_dir

    return cache_dir()


def build_plan(config: Config, local_tasks: LocalTasks, index=None, batch_size: int | None = None, include_paths=(),
               concurrency: int | None = None) -> Plan:
    """Benchmarks in execution order: by priority (high, medium, low), ties in config order.

    An enabled benchmark runs each name in its ``tasks``: a name with an entry in the ``tasks`` section takes that
    entry's settings (and is skipped when the entry is disabled); any other name is an lm-eval task run with
    defaults. A benchmark's priority is the highest priority among the entries it runs.
    """
    include_paths = tuple(str(p) for p in include_paths)
    planned: list[BenchmarkPlan] = []
    for bench in config.benchmarks.values():
        plan = BenchmarkPlan(name=bench.name, description=bench.description, enabled=bench.enabled,
                             priority=PRIORITIES[-1])
        if not bench.enabled:
            plan.skip_reason = "disabled in the config"
            plan.priority = "-"
            planned.append(plan)
            continue
        for name in bench.tasks:
            entry = config.tasks.get(name) or TaskEntry(name=name, tasks=(name,))
            if not entry.enabled:
                continue
            plan.runs.append(_entry_run(bench.name, entry, batch_size, concurrency, index, include_paths, local_tasks))
        if not plan.runs:
            plan.skip_reason = "every task it lists is disabled in the tasks section"
            plan.priority = "-"
        else:
            plan.runs.sort(key=lambda r: PRIORITIES.index(r.priority))
            plan.priority = plan.runs[0].priority
        planned.append(plan)
    order = {name: i for i, name in enumerate(config.benchmarks)}
    planned.sort(key=lambda b: (b.skip_reason is not None, PRIORITIES.index(b.priority) if b.priority in PRIORITIES
                                else len(PRIORITIES), order[b.name]))
    return Plan(benchmarks=planned, data_dir=local_tasks.data_dir)


# ---------------------------------------------------------------------------------------------------------------
# The lm-eval invocation, as a command line and as simple_evaluate() arguments


_MODEL_ARG_VALUE = re.compile(r"^[^,=]*$")


def format_model_args(args: dict) -> str:
    """lm-eval's ``key=value,key=value`` form. A value that would change how lm-eval splits it is refused."""
    parts = []
    for key, value in args.items():
        text = str(value)
        if not _MODEL_ARG_VALUE.match(text):
            raise UsageError(
                f"model argument {key}={text!r} contains a comma or '=', which lm-eval's --model_args "
                "cannot carry: rename the path or model so it has none"
            )
        parts.append(f"{key}={text}")
    return ",".join(parts)


def lm_eval_argv(run: TaskRun, model: ModelSettings, output_path: str, use_cache: str | None = None) -> list[str]:
    """The ``lm_eval run`` command line equivalent to what the worker runs for ``run``. It holds no secret: the
    endpoint URL carries no credentials (refused at --endpoint) and the API key stays in the environment."""
    argv = ["lm_eval", "run", "--model", model.lm_eval_model,
            "--model_args", format_model_args(model.for_run(run).model_args()),
            "--tasks", ",".join(run.tasks), "--batch_size", str(model.batch_size(run))]
    if run.num_fewshot is not None:
        argv += ["--num_fewshot", str(run.num_fewshot)]
    if run.limit is not None:
        argv += ["--limit", str(run.limit)]
    if model.chat:
        argv.append("--apply_chat_template")
    argv += ["--output_path", output_path]
    if use_cache:
        argv += ["--use_cache", use_cache]
    if run.log_samples:
        argv.append("--log_samples")
    for folder in run.include_paths:
        argv += ["--include_path", folder]
    return argv


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def request_cache_key(model: ModelSettings) -> str:
    """lm-eval's request cache does not key by model or endpoint: one cache file per (endpoint, model, prompt
    form), so a different model or endpoint is never served another's answers."""
    import hashlib

    identity = "|".join(str(x) for x in (model.base_url, model.model, model.tokenizer_backend,
                                          model.tokenized_requests, model.max_length))
    if model.lm_eval_model != LM_EVAL_MODEL:  # it reads answers differently: its cached scores are its own
        identity += f"|{model.lm_eval_model}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def simple_evaluate_kwargs(run: TaskRun, model: ModelSettings, use_cache: str | None = None) -> dict:
    """Keyword arguments for ``lm_eval.simple_evaluate`` (without the TaskManager, which the worker builds)."""
    return {
        "use_cache": use_cache,
        "model": model.worker_model,
        "model_args": model.for_run(run).model_args(),
        "tasks": list(run.tasks),
        "num_fewshot": run.num_fewshot,
        "batch_size": model.batch_size(run),
        "limit": run.limit,
        "log_samples": run.log_samples,
        **({"apply_chat_template": True} if model.chat else {}),
    }
