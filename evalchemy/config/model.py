"""Load and validate ``eval_config.json``.

Every problem is reported at once, one line each, with its location: JSON syntax errors (line and column, with a
hint for the comments and trailing commas people copy from examples), schema errors (JSON path), and task names
that are neither in the config's ``tasks`` section nor known to lm-eval (with a "did you mean").
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from evalchemy.errors import ConfigError, setting
from evalchemy.config.jsonfile import parse_json
from evalchemy.config.names import benchmark_name_problem

PRIORITIES = ("high", "medium", "low")
DEFAULT_PRIORITY = "medium"
KMMLU_REPO = "HAERAE-HUB/KMMLU"
# The subsets (configs) of HAERAE-HUB/KMMLU, as lm-eval 0.4.13's kmmlu tasks name them: no Insurance, no Finance.
KMMLU_SUBJECTS = (
    "Accounting", "Agricultural-Sciences", "Aviation-Engineering-and-Maintenance", "Biology", "Chemical-Engineering",
    "Chemistry", "Civil-Engineering", "Computer-Science", "Construction", "Criminal-Law", "Ecology", "Economics",
    "Education", "Electrical-Engineering", "Electronics-Engineering", "Energy-Management", "Environmental-Science",
    "Fashion", "Food-Processing", "Gas-Technology-and-Engineering", "Geomatics", "Health", "Industrial-Engineer",
    "Information-Technology", "Interior-Architecture-and-Design", "Korean-History", "Law",
    "Machine-Design-and-Manufacturing", "Management", "Maritime-Engineering", "Marketing", "Materials-Engineering",
    "Math", "Mechanical-Engineering", "Nondestructive-Testing", "Patent", "Political-Science-and-Sociology",
    "Psychology", "Public-Safety", "Railway-and-Automotive-Engineering", "Real-Estate", "Refrigerating-Machinery",
    "Social-Welfare", "Taxation", "Telecommunications-and-Wireless-Technology",
)


@dataclass(frozen=True)
class DatasetSpec:
    """A task entry's ``dataset`` block: local data in the KMMLU format."""

    path: str
    subset: str | None = None
    answers: str = "1-4"
    mode: str = "multiple_choice"  # or "generative": answered in words, the letter read from the reply
    source_repo: str | None = None
    source_subset: str | None = None
    source_revision: str | None = None


@dataclass(frozen=True)
class TaskEntry:
    """One entry of the config's ``tasks`` section."""

    name: str
    enabled: bool = True
    tasks: tuple[str, ...] = ()
    num_fewshot: int | None = None
    batch_size: int | None = None
    concurrency: int | None = None
    limit: int | None = None
    description: str = ""
    label: str | None = None
    metrics: tuple[str, ...] = ()
    output_path: str | None = None
    log_samples: bool = False
    priority: str = DEFAULT_PRIORITY
    timeout: int | None = None
    dataset: DatasetSpec | None = None


@dataclass(frozen=True)
class Benchmark:
    """One entry of the config's ``benchmarks`` section."""

    name: str
    enabled: bool
    description: str
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class ModelSection:
    """The config's optional ``model`` section: how the model is reached when no flag says (flags override it)."""

    backend: str | None = None
    endpoint: str | None = None
    name: str | None = None
    tokenizer: str | None = None


@dataclass
class Config:
    path: Path
    sha256: str
    benchmarks: dict[str, Benchmark]
    tasks: dict[str, TaskEntry]
    warnings: list[str] = field(default_factory=list)
    model: ModelSection = field(default_factory=ModelSection)


def load_schema(name: str = "config.schema.json") -> dict:
    return json.loads(resources.files("evalchemy").joinpath("schemas", name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Schema


def _location(path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _schema_message(error) -> tuple[str, str]:
    """(location, message) for one jsonschema error, phrased for people editing the file."""
    location = _location(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in extra:
            close = _close(key, allowed)
            parts.append(f"unknown key '{key}'" + (f" (did you mean '{close}'?)" if close else ""))
        return location, "; ".join(parts) + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
    if error.validator == "pattern":
        defs = load_schema()["$defs"]
        if error.validator_value == defs["name"]["pattern"]:
            return location, (f"{error.instance!r} is not a valid task entry name: entry names, like the task "
                              "names a benchmark lists, use ASCII letters, digits, '.', '_' and '-', starting with a "
                              "letter or digit, up to 128 (a name in another script goes in the entry's label)")
        if error.validator_value == defs["lm_eval_task"]["pattern"]:
            return location, (f"{error.instance!r} is not a valid lm-eval task name: use letters, digits, "
                              "'.', '_' and '-' (no commas, spaces or leading '-')")
    if error.validator == "propertyNames":
        return location, error.message
    if error.validator == "enum":
        return location, f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "minItems" and error.validator_value == 1:
        return location, "must list at least one name"
    return location, error.message


def _close(word: str, choices) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def schema_problems(data: object) -> list[str]:
    from evalchemy.config.quickcheck import certainly_valid

    if certainly_valid(load_schema(), data):  # a valid config does not import jsonschema
        return []
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema())
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        location, message = _schema_message(error)
        problems.append(f"{location}: {message}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Semantics


def _output_path_problem(value: str) -> str | None:
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", value):
        return f"{value!r} must be a path relative to the run's results folder, not an absolute path"
    if ".." in posix.parts:
        return f"{value!r} must stay inside the run's results folder: remove '..'"
    return None


def _kmmlu_hint(name: str, index) -> str:
    """KMMLU has 45 subjects and no Insurance or Finance one: name the real subjects."""
    if not name.lower().startswith("kmmlu_") or "kmmlu" not in index.groups:
        return ""
    subjects = sorted(task.removeprefix("kmmlu_") for task in index.leaf_tasks("kmmlu"))
    return (f"; KMMLU has {len(subjects)} subjects, none named {name.removeprefix('kmmlu_')!r} "
            f"(domain sets such as insurance are your own data in the KMMLU format): {', '.join(subjects)}; "
            f"for your own data add a tasks entry with a dataset block, e.g. \"{name}\": "
            f"{{\"enabled\": true, \"dataset\": {{\"path\": \"kmmlu/{name.removeprefix('kmmlu_')}\"}}}}")


def semantic_problems(data: dict, index) -> tuple[list[str], list[str]]:
    """(problems, warnings) that the schema cannot express. ``index`` answers which lm-eval task names exist;
    None skips that check."""
    problems: list[str] = []
    warnings: list[str] = []
    def mapping(value) -> dict:
        return value if isinstance(value, dict) else {}

    task_name = re.compile(load_schema()["$defs"]["lm_eval_task"]["pattern"])

    def names(value) -> list[str]:
        """Well-formed names only: malformed ones are already reported by the schema."""
        return [v if isinstance(v, str) and task_name.match(v) else None for v in value] \
            if isinstance(value, list) else []

    tasks = mapping(data.get("tasks"))
    referenced: set[str] = set()

    def unknown(location: str, name: str, extra_choices=()) -> None:
        close = [c for c in [_close(name, extra_choices)] if c] + index.suggestions(name)
        hint = f" (did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?)" if close else ""
        where = "a task in this config's tasks section nor " if extra_choices is tasks else ""
        problems.append(f"{location}: {name!r} is not {where}an lm-eval task{hint}{_kmmlu_hint(name, index)}")

    for bench_name, bench in mapping(data.get("benchmarks")).items():
        if benchmark_name_problem(bench_name):
            problems.append(f"benchmarks: {benchmark_name_problem(bench_name)}")
        bench = mapping(bench)
        for i, name in enumerate(names(bench.get("tasks"))):
            referenced.add(name)
            if name is None or name in tasks:
                continue
            if index is not None and not index.knows(name):
                unknown(f"benchmarks.{bench_name}.tasks[{i}]", name, tasks)
        if bench.get("enabled") is True:
            entries = [mapping(tasks[n]) if n in tasks else None for n in names(bench.get("tasks"))]
            if entries and all(e is not None and e.get("enabled") is False for e in entries):
                warnings.append(f"benchmarks.{bench_name}: enabled, but every task it lists is disabled; "
                                "it will be skipped")

    for entry_name, entry in tasks.items():
        entry = mapping(entry)
        if "dataset" in entry:
            problems += _dataset_problems(entry_name, entry)
        for i, name in enumerate(names(entry.get("tasks", [entry_name]) if "dataset" not in entry else [])):
            if name is not None and index is not None and not index.knows(name):
                unknown(f"tasks.{entry_name}.tasks[{i}]" if "tasks" in entry else f"tasks.{entry_name}", name)
        if isinstance(entry.get("output_path"), str):
            problem = _output_path_problem(entry["output_path"])
            if problem:
                problems.append(f"tasks.{entry_name}.output_path: {problem}")
        if entry_name not in referenced:
            warnings.append(f"tasks.{entry_name}: not listed by any benchmark, so it never runs")
    return problems, warnings


def _dataset_problems(entry_name: str, entry: dict) -> list[str]:
    problems = []
    if "tasks" in entry:
        problems.append(f"tasks.{entry_name}: give either tasks (lm-eval tasks to run) or dataset (local data this "
                        "entry runs as its own task), not both")
    dataset = entry["dataset"] if isinstance(entry["dataset"], dict) else {}
    source = dataset.get("source") if isinstance(dataset.get("source"), dict) else {}
    if str(source.get("repo", "")).lower() == KMMLU_REPO.lower():
        subject = source.get("subset")
        if subject is None:
            problems.append(f"tasks.{entry_name}.dataset.source.subset: {KMMLU_REPO} needs a subject; one of: "
                            f"{', '.join(KMMLU_SUBJECTS)}")
        elif isinstance(subject, str) and subject not in KMMLU_SUBJECTS:
            close = [s for s in KMMLU_SUBJECTS if s.lower() == subject.lower()] or \
                [c for c in [_close(subject, KMMLU_SUBJECTS)] if c]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"tasks.{entry_name}.dataset.source.subset: {subject!r} is not a KMMLU subject{hint}; "
                            f"KMMLU has {len(KMMLU_SUBJECTS)} subjects and no Insurance or Finance one (domain sets "
                            f"such as insurance are your own data in the KMMLU format): {', '.join(KMMLU_SUBJECTS)}")
    return problems


# ---------------------------------------------------------------------------------------------------------------


def _problem_order(problem: str) -> list:
    """Sort problems by location, reading [N] indexes as numbers."""
    location = problem.split(": ", 1)[0]
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", location) if p]


def _dataset_spec(block: dict | None) -> DatasetSpec | None:
    if block is None:
        return None
    source = block.get("source", {})
    return DatasetSpec(path=block["path"], subset=block.get("subset"), answers=block.get("answers", "1-4"),
                       mode=block.get("mode", "multiple_choice"), source_repo=source.get("repo"), source_subset=source.get("subset"),
                       source_revision=source.get("revision"))


def load_config(path: Path, index=None) -> Config:
    """Read, validate and return the config. Raises ConfigError listing every problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        found = f"file not found: pass {setting('config')} with the path of your eval_config.json"
        raise ConfigError(str(path), [found]) from None
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read the file: {err.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [f"byte {err.start}: the file is not UTF-8 text: save it as UTF-8"]) from None
    data = parse_json(path, text)
    problems = schema_problems(data)
    more, warnings = semantic_problems(data, index) if isinstance(data, dict) else ([], [])
    problems = sorted(set(problems + more), key=lambda problem: (_problem_order(problem), problem))
    if problems:
        raise ConfigError(str(path), problems)

    tasks = {}
    for name, entry in data.get("tasks", {}).items():
        tasks[name] = TaskEntry(
            name=name,
            enabled=entry["enabled"],
            tasks=tuple(entry.get("tasks", [name])),  # a dataset entry runs the task evalchemy writes, of its name
            num_fewshot=entry.get("num_fewshot"),
            batch_size=entry.get("batch_size"),
            concurrency=entry.get("concurrency"),
            limit=entry.get("limit"),
            description=entry.get("description", ""),
            label=entry.get("label"),
            metrics=tuple(entry.get("metrics", ())),
            output_path=entry.get("output_path"),
            log_samples=entry.get("log_samples", False),
            priority=entry.get("priority", DEFAULT_PRIORITY),
            timeout=entry.get("timeout"),
            dataset=_dataset_spec(entry.get("dataset")),
        )
    benchmarks = {
        name: Benchmark(name=name, enabled=b["enabled"], description=b.get("description", ""), tasks=tuple(b["tasks"]))
        for name, b in data["benchmarks"].items()
    }
    section = data.get("model", {})
    model = ModelSection(backend=section.get("backend"), endpoint=section.get("endpoint"), name=section.get("name"),
                         tokenizer=section.get("tokenizer"))
    return Config(path=path, sha256=hashlib.sha256(raw).hexdigest(), benchmarks=benchmarks, tasks=tasks,
                  warnings=warnings, model=model)
