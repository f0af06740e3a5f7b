"""What a run is given (``RunOptions``), what it gives back (``RunResult``) and the progress callbacks (``Events``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evalchemy.errors import plain_words
from evalchemy.execution.pool import RunOutcome
from evalchemy.plan import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT_S, BenchmarkPlan
from evalchemy.results.summary import BenchmarkRecord


@dataclass(frozen=True)
class RunOptions:
    endpoint: str
    run_id: str
    output_dir: Path
    model: str | None = None
    tokenizer: str | None = None
    batch_size: int | None = None
    gpu: str | None = None
    max_length: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    request_timeout: int = DEFAULT_REQUEST_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    log_level: str = "INFO"
    max_failed_requests: int = 0
    online: bool = False  # let lm-eval download datasets and tokenizers from the hub
    home: Path | None = None  # relative dataset paths in task YAMLs are read from here (the project folder)
    proxy: str | None = field(default=None, repr=False)  # every request to the endpoint goes through this HTTP proxy
    store: str | None = None  # the results store's URL; the run records itself there at its end
    more_endpoints: tuple[str, ...] = ()  # the same model served elsewhere: benchmarks spread over all (spread.py)
    client: str = "evalchemy"  # "lm-eval": lm-eval's stock local-completions client instead of the lean one
    backend: str | None = None  # the registry's name (--backend, the config's model.backend); None: by endpoint

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_id


@dataclass
class RunResult:
    summary: dict
    summary_path: Path
    exit_code: int
    records: list[BenchmarkRecord] = field(default_factory=list)
    disk_full: list[str] = field(default_factory=list)  # benchmarks that failed for lack of space
    summary_error: str | None = None  # set when the summary could not be written (disk full): nothing on disk


class Events:
    """Progress callbacks; the CLI subclasses this to draw progress. The default does nothing."""

    def words(self, message: str) -> str:
        """A message with its settings named the caller's way (bare names here; the CLI shows its flags): used for
        the preflight error the log and the summary keep."""
        return plain_words(message)

    def preflight_done(self, model: str, tokenizer) -> None: ...  # tokenizer: a TokenizerChoice

    def benchmark_started(self, bench: BenchmarkPlan, position: int, total: int) -> None: ...

    def task_run_done(self, outcome: RunOutcome) -> None: ...

    def benchmark_done(self, record: BenchmarkRecord) -> None: ...

