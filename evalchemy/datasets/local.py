"""Local datasets in the KMMLU format: find them on disk, read them, check them, and hand them to lm-eval.

A task entry with a ``dataset`` block runs a task evalchemy writes itself (``task_files``) on data under the data
folder (``data/benchmarks`` by default). The data can be any of:

- a ``save_to_disk`` folder (``DatasetDict`` with ``dataset_dict.json``, or a single ``Dataset``: its rows are the
  test split);
- one ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` / ``.arrow`` file (the test split);
- a folder of such files named by split (``test.jsonl``, ``dev.csv``, ``Accounting-test.csv``,
  ``test-00000-of-00001.parquet``), or a local mirror of a hub dataset repo (its ``README.md`` ``configs`` are read;
  ``subset`` picks one, e.g. ``Accounting`` in a KMMLU mirror).

Splits: ``validation``/``valid``/``val`` count as ``dev`` (the few-shot split); with no dev split, ``train`` gives
the few-shot examples. Answers follow KMMLU (``answer`` 1-4) unless the entry says ``0-3`` or ``A-D``.

The same reader serves the preflight check, the export row counts and lm-eval's loader, so what was checked is what
runs. Reading needs no ``datasets`` import (only ``pyarrow`` for Parquet and Arrow files).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from evalchemy.errors import PreflightError

COLUMNS = ("question", "A", "B", "C", "D", "answer")
ANSWER_STYLES = {"1-4": "KMMLU counts answers from 1", "0-3": "answers counted from 0", "A-D": "answer letters"}
DEFAULT_ANSWERS = "1-4"
FILE_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
SPLITS = {"test": "test", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "train": "train"}
IMPORT_COMMAND = "scripts/import_data.sh ARCHIVE"
EXPORT_COMMAND = "scripts/export_data.sh"
TEMPLATE_DIR = Path(__file__).resolve().parent / "task_templates"
MAX_DEPTH = 4  # how deep a folder of data files is searched


class DataError(PreflightError):
    """Local data that is unreadable or not in the expected format."""


class MissingData(DataError):
    """Nothing at a dataset's path."""


@dataclass(frozen=True)
class LocalData:
    """A dataset found on disk: what kind it is and which files hold each split (``test``, ``dev``, ``train``)."""

    path: Path
    kind: str  # save_to_disk, save_to_disk-dataset, file, files, hub-mirror
    splits: dict[str, tuple[Path, ...]]
    files: tuple[Path, ...]  # every file the dataset needs (what an export carries)

    @property
    def fewshot_split(self) -> str | None:
        return "dev" if "dev" in self.splits else "train" if "train" in self.splits else None


# --- finding the data ------------------------------------------------------------------------------------------

def resolve(data_dir: Path, path: str) -> Path:
    """A config's ``dataset.path``: relative to the data folder, or absolute."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else data_dir / candidate


def _split_of(name: str) -> str | None:
    """The split a file name stands for: the last split word among its ``-_.`` separated parts."""
    found = None
    for part in re.split(r"[-_.]", name.lower()):
        if part in SPLITS:
            found = SPLITS[part]
    return found


def _add(splits: dict[str, list[Path]], split: str, files) -> None:
    bucket = splits.setdefault(split, [])
    for f in files:
        if f not in bucket:
            bucket.append(f)


def _save_to_disk_files(folder: Path) -> list[Path]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return [folder / f["filename"] for f in state.get("_data_files", [])]


def _card_configs(folder: Path) -> list[dict] | None:
    """The ``configs`` list of a hub dataset card (README.md front matter), or None."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    import yaml

    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else None


def _card_splits(folder: Path, config: dict) -> dict[str, list[Path]]:
    """A card config's ``data_files``: a list of {split, path} (path a glob or a list of globs), or bare globs,
    which the hub reads as the train split."""
    data_files = config.get("data_files") or []
    if isinstance(data_files, str):
        data_files = [data_files]
    splits: dict[str, list[Path]] = {}
    for item in data_files if isinstance(data_files, list) else []:
        entry = item if isinstance(item, dict) else {"split": "train", "path": item}
        split = SPLITS.get(str(entry.get("split", "train")).lower())
        patterns = entry.get("path")
        for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
            if split:
                _add(splits, split, sorted(p for p in folder.glob(str(pattern)) if p.is_file()))
    return splits


def _data_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if len(rel.parts) > MAX_DEPTH or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in FILE_FORMATS:
            found.append(path)
    return found


def _subset_match(rel: str, subset: str) -> bool:
    return re.search(rf"(^|[/_.-]){re.escape(subset.lower())}([/_.-]|$)", rel.lower()) is not None


def detect(path: Path, subset: str | None = None) -> LocalData:
    """What is at ``path``, or DataError saying what was expected there."""
    if not path.exists():
        raise MissingData(f"no data at {path}")
    if path.is_file():
        if path.suffix.lower() not in FILE_FORMATS:
            raise DataError(f"{path}: not a data file (expected .jsonl, .json, .csv, .parquet or .arrow)")
        return LocalData(path, "file", {"test": (path,)}, (path,))
    if (path / "dataset_dict.json").is_file():
        saved = saved_splits(path)
        splits: dict[str, list[Path]] = {}
        for name, files in saved.items():
            if SPLITS.get(name.lower()):
                _add(splits, SPLITS[name.lower()], files)
        return _finish(path, "save_to_disk", splits, saved_files(path, saved))
    if (path / "state.json").is_file():
        data = _save_to_disk_files(path)
        return _finish(path, "save_to_disk-dataset", {"test": data},
                       [path / "state.json", path / "dataset_info.json", *data])
    configs = _card_configs(path)
    if configs:
        names = [str(c.get("config_name", "default")) for c in configs]
        if subset is None and len(configs) > 1:
            raise DataError(f"{path} is a dataset mirror with {len(configs)} subsets ({_list(names)}): set "
                            "dataset.subset to one of them")
        chosen = configs[0] if subset is None else next((c for c, n in zip(configs, names) if n == subset), None)
        if chosen is None:
            close = [n for n in names if n.lower() == subset.lower()]
            raise DataError(f"{path}: no subset {subset!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                            f"; this mirror holds: {_list(names)}")
        splits = _card_splits(path, chosen)
        return _finish(path, "hub-mirror", splits, [path / "README.md", *(f for fs in splits.values() for f in fs)])
    splits = {}
    for file in _data_files(path):
        rel = file.relative_to(path).as_posix()
        split = _split_of(file.name) or next((SPLITS[p.lower()] for p in reversed(file.relative_to(path).parts[:-1])
                                              if p.lower() in SPLITS), None)
        if split and (subset is None or _subset_match(rel, subset)):
            _add(splits, split, [file])
    if not splits:
        what = f" for subset {subset!r}" if subset else ""
        raise DataError(f"{path}: no data files{what} (expected a save_to_disk folder, or .jsonl/.csv/.parquet files "
                        "named by split such as test.jsonl and dev.jsonl)")
    return _finish(path, "files", splits, [f for fs in splits.values() for f in fs])


def _finish(path: Path, kind: str, splits: dict[str, list[Path]], files: list[Path]) -> LocalData:
    splits = {k: v for k, v in splits.items() if v}
    if "test" not in splits:
        found = ", ".join(sorted(splits)) or "none"
        raise DataError(f"{path}: no test split (splits found: {found}); the questions to score must be in a split "
                        "named test")
    unique: list[Path] = []
    for f in files:
        if f not in unique:
            unique.append(f)
    missing = [f for f in unique if not f.is_file()]
    if missing:
        raise DataError(f"{path}: {missing[0]} is missing" + (f" (and {len(missing) - 1} more files)"
                                                              if len(missing) > 1 else "") + " (an incomplete copy?)")
    return LocalData(path, kind, {k: tuple(v) for k, v in sorted(splits.items())}, tuple(unique))


def _list(names) -> str:
    names = list(names)
    return ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")


# --- reading rows ----------------------------------------------------------------------------------------------

def read_file(file: Path) -> list[dict]:
    """Every row of one data file, as dicts. DataError when the file cannot be parsed."""
    kind = FILE_FORMATS.get(file.suffix.lower())
    try:
        if kind == "csv":
            with open(file, newline="", encoding="utf-8-sig") as handle:
                return list(csv.DictReader(handle))
        if kind in ("jsonl", "json"):
            text = file.read_text(encoding="utf-8-sig")
            whole = _whole_json(text) if kind == "json" else None
            if isinstance(whole, list):  # a JSON array of rows
                rows = whole
            elif isinstance(whole, dict) and isinstance(whole.get("data"), list):  # {"data": [rows]}
                rows = whole["data"]
            else:  # JSON Lines
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            if not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{file}: every row must be a JSON object")
            return rows
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(file).to_pylist()
        if kind == "arrow":
            return _arrow_table(file).to_pylist()
    except DataError:
        raise
    except Exception as err:  # OSError, JSON, CSV and pyarrow's own errors: each names the damage
        raise DataError(f"{file}: cannot be read as {kind}: {err}") from None
    raise DataError(f"{file}: not a data file")


def _arrow_table(file: Path):
    """An Arrow file: the stream format that ``save_to_disk`` writes, or the random-access file format."""
    import pyarrow as pa

    with pa.memory_map(str(file)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _whole_json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def read_split(data: LocalData, split: str) -> list[dict]:
    return [row for file in data.splits.get(split, ()) for row in read_file(file)]


def gold(value, answers: str) -> int | None:
    """The 0-based index of the right choice, or None when ``value`` is not an answer in that style."""
    if answers == "A-D":
        text = str(value).strip().upper() if value is not None else ""
        return "ABCD".index(text) if len(text) == 1 and text in "ABCD" else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if not number.is_integer():
        return None
    index = int(number) - (1 if answers == "1-4" else 0)
    return index if 0 <= index <= 3 else None


def _answer_fix(answers: str, values: list) -> str:
    letters = all(isinstance(v, str) and v.strip().upper() in ("A", "B", "C", "D") for v in values)
    zero = any(gold(v, "0-3") == 0 for v in values)
    if answers != "A-D" and letters:
        return 'the answers are letters: set "answers": "A-D" in the task\'s dataset block'
    if answers == "1-4" and zero:
        return 'this data counts answers from 0: set "answers": "0-3" in the task\'s dataset block'
    return f"answers must be {answers} ({ANSWER_STYLES[answers]})"


def check(data: LocalData, answers: str = DEFAULT_ANSWERS, num_fewshot: int | None = None) -> dict[str, int]:
    """Rows per split after checking columns and answers; DataError naming the file, row and fix otherwise."""
    counts = {}
    for split in data.splits:
        rows = read_split(data, split)
        counts[split] = len(rows)
        if split == "train" and "dev" in data.splits:
            continue  # never used: not checked
        where = ", ".join(str(f) for f in data.splits[split][:2])
        if not rows:
            if split == "test":
                raise DataError(f"{where}: the test split has no rows")
            continue
        missing = [c for c in COLUMNS if c not in rows[0]]
        if missing:
            raise DataError(f"{where}: column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing; the "
                            f"KMMLU format needs {', '.join(COLUMNS)} (found: {', '.join(map(str, rows[0]))})")
        bad = [(i, r.get("answer")) for i, r in enumerate(rows, 1) if gold(r.get("answer"), answers) is None]
        if bad:
            shown = ", ".join(f"row {i}: {v!r}" for i, v in bad[:3]) + (f" (and {len(bad) - 3} more)"
                                                                         if len(bad) > 3 else "")
            raise DataError(f"{where} ({split} split): {len(bad)} answer{'s' if len(bad) > 1 else ''} not in "
                            f"{answers}: {shown}; {_answer_fix(answers, [v for _, v in bad] + [r.get('answer') for r in rows])}")
    if num_fewshot:
        split = data.fewshot_split
        have = counts.get(split, 0) if split else 0
        if have < num_fewshot:
            raise DataError(f"{data.path}: {num_fewshot}-shot needs {num_fewshot} examples in a dev (or validation) "
                            f"split; " + (f"the {split} split has {have}" if split else "there is none") +
                            ": add one, or lower num_fewshot")
    return counts


# --- lm-eval's side --------------------------------------------------------------------------------------------

def normalized_rows(rows: list[dict], answers: str) -> list[dict]:
    """KMMLU columns as strings plus ``gold``, the 0-based index of the right choice."""
    out = []
    for row in rows:
        item = {c: "" if row.get(c) is None else str(row[c]) for c in COLUMNS[:5]}
        index = gold(row.get("answer"), answers)
        if index is None:
            raise DataError(f"answer {row.get('answer')!r} is not {answers}")
        item["gold"] = index
        item["Category"] = str(row.get("Category") or "")
        out.append(item)
    return out


def load_task_dataset(data_path: str, subset: str | None = None, answers: str = DEFAULT_ANSWERS, **_metadata):
    """lm-eval's ``custom_dataset``: the local data as a DatasetDict with ``test`` and ``dev`` (possibly empty)."""
    from datasets import Dataset, DatasetDict, Features, Value

    data = detect(Path(data_path), subset or None)
    features = Features({**{c: Value("string") for c in COLUMNS[:5]}, "gold": Value("int64"),
                         "Category": Value("string")})
    splits = {"test": read_split(data, "test"), "dev": read_split(data, data.fewshot_split) if data.fewshot_split
              else []}
    def columns(rows: list[dict]) -> dict[str, list]:
        return {name: [row[name] for row in rows] for name in features}

    return DatasetDict({name: Dataset.from_dict(columns(normalized_rows(rows, answers)), features=features)
                        for name, rows in splits.items()})


# --- save_to_disk folders ----------------------------------------------------------------------------------------

def saved_splits(folder: Path) -> dict[str, tuple[Path, ...]]:
    """The splits of a ``save_to_disk`` DatasetDict under their own names, or DataError."""
    listing = folder / "dataset_dict.json"
    if not listing.is_file():
        raise MissingData(f"no saved copy at {folder}")
    splits = {}
    for name in json.loads(listing.read_text(encoding="utf-8")).get("splits", []):
        if not (folder / name / "state.json").is_file():
            raise DataError(f"{folder}: split {name!r} is listed in dataset_dict.json but {folder / name} holds no "
                            "saved dataset (an incomplete copy?)")
        files = tuple(_save_to_disk_files(folder / name))
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{folder}: {missing[0]} is missing (an incomplete copy?)")
        splits[name] = files
    return splits


def saved_files(folder: Path, splits: dict[str, tuple[Path, ...]]) -> list[Path]:
    """Every file of a ``save_to_disk`` DatasetDict with these ``saved_splits`` (what an export carries)."""
    files = [folder / "dataset_dict.json"]
    for name, data in splits.items():
        files += [folder / name / "state.json", folder / name / "dataset_info.json", *data]
    return files


def split_rows(splits: dict[str, tuple[Path, ...]]) -> dict[str, int]:
    """Rows of each split of a ``save_to_disk`` DatasetDict."""
    counts = {}
    for name, files in splits.items():
        total = 0
        for file in files:
            try:
                total += _arrow_table(file).num_rows
            except Exception as err:  # pyarrow's errors name the damage
                raise DataError(f"{file}: cannot be read as arrow: {err}") from None
        counts[name] = total
    return counts
