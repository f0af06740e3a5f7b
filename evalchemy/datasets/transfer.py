"""Carry local datasets to a closed network: export them into one archive with a manifest on a connected machine,
import the archive into the data folder on the closed one.

The archive is a ``.tar.gz`` holding ``manifest.json`` first, then ``data/<path>`` for every file the datasets need
(paths relative to the data folder). The manifest names each dataset (the task entry, its path and subset, its kind
and the rows of each split) and each file (bytes, sha256). Import extracts into a staging folder inside the data
folder, checks every file against the manifest and re-reads every dataset, and only then moves the files into place:
a damaged, tampered or partial archive is refused and the data folder stays as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from evalchemy import __version__, atomic
from evalchemy.datasets import hub as hubdata, local as localdata
from evalchemy.datasets.fetch import fetch_hub_copy, fetch_source
from evalchemy.config.model import Config, TaskEntry
from evalchemy.errors import UsageError, setting
from evalchemy.datasets.local import DataError

logger = logging.getLogger(__name__)

ARCHIVE_FORMAT = "evalchemy-data-archive"
ARCHIVE_VERSION = 1
MANIFEST = "manifest.json"
DATA_PREFIX = "data/"
CHUNK = 1 << 20


@dataclass
class DatasetReport:
    task: str
    path: str
    kind: str
    splits: dict[str, int]
    state: str = ""  # exported, fetched, imported, unchanged, replaced


@dataclass
class TransferReport:
    archive: Path
    data_dir: Path
    datasets: list[DatasetReport] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _relative(data_dir: Path, path: Path) -> str:
    return path.resolve().relative_to(data_dir.resolve()).as_posix()


# --- export -----------------------------------------------------------------------------------------------------

def entries_to_export(config: Config, benchmarks: tuple[str, ...] = ()) -> list[TaskEntry]:
    """The task entries a config runs: those of its enabled benchmarks, or of the benchmarks named (even when
    disabled). A benchmark's name with no entry is an lm-eval task run with defaults."""
    unknown = [b for b in benchmarks if b not in config.benchmarks]
    if unknown:
        raise UsageError(f"{setting('benchmark')} {unknown[0]}: not a benchmark of {config.path} (it has: "
                         f"{', '.join(config.benchmarks)})")
    chosen = [config.benchmarks[b] for b in benchmarks] if benchmarks else \
        [b for b in config.benchmarks.values() if b.enabled]
    found: list[TaskEntry] = []
    for bench in chosen:
        for name in bench.tasks:
            entry = config.tasks.get(name) or TaskEntry(name=name, tasks=(name,))
            if (entry.enabled or benchmarks) and entry not in found:
                found.append(entry)
    return found


def export_archive(config: Config, data_dir: Path, output: Path, benchmarks: tuple[str, ...] = (), index=None,
                   home: Path | None = None) -> TransferReport:
    """Write every dataset the config needs into ``output``: its tasks' local datasets (fetching ``source`` data that
    is not in the data folder yet) and, with ``index``, saved copies of the hub datasets its lm-eval tasks load.
    DataError or UsageError when a dataset cannot be exported; no archive is left behind then."""
    data_dir = data_dir.resolve()
    home = home or Path.cwd()
    report = TransferReport(archive=output, data_dir=data_dir)
    datasets_entries: list[dict] = []
    files: dict[str, Path] = {}
    for entry in entries_to_export(config, benchmarks):
        if entry.dataset is None:
            _add_hub_copies(entry, index, home, data_dir, datasets_entries, files, report)
        else:
            _add_dataset(entry, data_dir, datasets_entries, files, report)
    if not datasets_entries:
        what = f"benchmark{'s' if len(benchmarks) > 1 else ''} {', '.join(benchmarks)}" if benchmarks else \
            "enabled benchmarks"
        raise UsageError(f"{config.path}: the {what} need no dataset that an archive can carry (no dataset block, "
                         "no lm-eval task loading a hub dataset), so there is nothing to export")
    manifest = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evalchemy_version": __version__,
        "config": config.path.name,
        "datasets": datasets_entries,
        "files": [{"path": rel, "bytes": files[rel].stat().st_size, "sha256": sha256_file(files[rel])}
                  for rel in sorted(files)],
    }
    _write_archive(output, manifest, files)
    report.files = len(files)
    report.bytes = output.stat().st_size
    return report


def _add_hub_copies(entry, index, home: Path, data_dir: Path, datasets_entries: list[dict], files: dict[str, Path],
                    report: TransferReport) -> None:
    """The saved copies of the hub datasets the entry's lm-eval tasks load (fetched when missing)."""
    hub_tasks = hubdata.hub_tasks(entry.tasks, index, home) if index is not None else []
    for task, _, path, name, kwargs in hub_tasks:
        copy = hubdata.hub_copy_dir(data_dir, path, name)
        rel = _relative(data_dir, copy)
        if any(d["path"] == rel for d in datasets_entries):
            continue
        state = "exported"
        if not copy.exists():
            fetch_hub_copy(task, path, name, kwargs, copy)
            state = "fetched"
        try:
            splits = localdata.saved_splits(copy)
            counts = localdata.split_rows(splits)
            saved = localdata.saved_files(copy, splits)
        except DataError as err:
            raise DataError(f"task {task}: {err}") from None
        for file in saved:
            files[_relative(data_dir, file)] = file
        datasets_entries.append({"task": task, "path": rel, "subset": name, "kind": "hub-copy",
                                 "splits": counts})
        report.datasets.append(DatasetReport(task, rel, "hub-copy", counts, state))


def _add_dataset(entry, data_dir: Path, datasets_entries: list[dict], files: dict[str, Path],
                 report: TransferReport) -> None:
    """The entry's local dataset (fetched from its ``source`` when not in the data folder yet), checked."""
    spec = entry.dataset
    path = localdata.resolve(data_dir, spec.path)
    try:
        rel = _relative(data_dir, path)
    except ValueError:
        raise UsageError(f"tasks.{entry.name}.dataset.path: {path} is outside the data folder {data_dir}: an "
                         "archive carries paths inside it; move the data there and give a relative path") from None
    state = "exported"
    if not path.exists() and spec.source_repo:
        fetch_source(entry, path)
        state = "fetched"
    try:
        data = localdata.detect(path, spec.subset)
        counts = localdata.check(data, spec.answers, entry.num_fewshot)
    except localdata.MissingData as err:
        raise DataError(f"task {entry.name}: {err}: put the data there" +
                        ("" if spec.source_repo else ", or add dataset.source so that export can fetch it")) from None
    except DataError as err:
        raise DataError(f"task {entry.name}: {err}") from None
    for file in data.files:
        files[_relative(data_dir, file)] = file
    datasets_entries.append({"task": entry.name, "path": rel, "subset": spec.subset, "kind": data.kind,
                             "answers": spec.answers, "splits": counts})
    report.datasets.append(DatasetReport(entry.name, rel, data.kind, counts, state))


def _write_archive(output: Path, manifest: dict, files: dict[str, Path]) -> None:
    """The .tar.gz: the manifest first, then the data files, replacing ``output`` only once complete."""
    with atomic.replacing(output) as tmp:
        with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            body = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(body), 0o644, int(datetime.now().timestamp())
            tar.addfile(info, io.BytesIO(body))
            for rel in sorted(files):
                tar.add(files[rel], arcname=DATA_PREFIX + rel, recursive=False,
                        filter=lambda i: _clean_info(i))


def _clean_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


# --- import -----------------------------------------------------------------------------------------------------

def _damaged(archive: Path, why: str) -> DataError:
    return DataError(f"{archive}: {why}; nothing was imported and the data folder is unchanged")


def _member_path(archive: Path, name: str) -> str | None:
    """The data-folder path of an archive member under ``data/``; None for the manifest. Refuses paths that would
    leave the data folder."""
    if name == MANIFEST:
        return None
    pure = PurePosixPath(name)
    if not name.startswith(DATA_PREFIX) or pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2:
        raise _damaged(archive, f"member {name!r} is not a data file of an evalchemy archive")
    return PurePosixPath(*pure.parts[1:]).as_posix()


def _extract(archive: Path, staging: Path) -> tuple[dict, dict[str, tuple[int, str]]]:
    """(manifest, {path: (bytes, sha256)}) of the archive, its data files written under ``staging``."""
    manifest = None
    seen: dict[str, tuple[int, str]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                rel = _member_path(archive, member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise _damaged(archive, f"member {member.name!r} is a link or special file, which an evalchemy "
                                            "archive never holds")
                source = tar.extractfile(member)
                assert source is not None
                if rel is None:
                    try:
                        manifest = json.loads(source.read().decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as err:
                        raise _damaged(archive, f"{MANIFEST} is not valid JSON ({err})") from None
                    continue
                if rel in seen:
                    raise _damaged(archive, f"{member.name!r} appears twice")
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                with open(target, "wb") as out:
                    for chunk in iter(lambda: source.read(CHUNK), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                seen[rel] = (size, digest.hexdigest())
    except (tarfile.ReadError, tarfile.CompressionError) as err:
        raise _damaged(archive, f"not a readable .tar.gz archive ({err}): make it with "
                                f"{localdata.EXPORT_COMMAND} on the connected machine") from None
    except (EOFError, zlib.error, tarfile.StreamError) as err:
        raise _damaged(archive, f"the archive is truncated or damaged ({err or type(err).__name__}): copy it "
                                "again") from None
    if manifest is None:
        raise _damaged(archive, f"no {MANIFEST}: it was not made by {localdata.EXPORT_COMMAND} (a plain "
                                "save_to_disk archive can be extracted into the data folder by hand, e.g. tar -xzf "
                                "ARCHIVE -C data/benchmarks/kmmlu)")
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise _damaged(archive, f"{MANIFEST} is not an evalchemy data manifest")
    if manifest.get("version") != ARCHIVE_VERSION:
        raise _damaged(archive, f"manifest version {manifest.get('version')!r} is not {ARCHIVE_VERSION}: import it "
                                "with the evalchemy version that exported it")
    return manifest, seen


def _verify(archive: Path, manifest: dict, seen: dict[str, tuple[int, str]], staging: Path) -> list[dict]:
    listed = {f.get("path"): f for f in manifest.get("files", []) if isinstance(f, dict)}
    missing = sorted(set(listed) - set(seen))
    if missing:
        raise _damaged(archive, f"{len(missing)} file{'s' if len(missing) > 1 else ''} of the manifest missing "
                                f"from the archive (first: {missing[0]}): the archive is incomplete, copy it again")
    extra = sorted(set(seen) - set(listed))
    if extra:
        raise _damaged(archive, f"{DATA_PREFIX}{extra[0]} is not listed in the manifest: the archive was changed "
                                "after export")
    for rel in sorted(listed):
        size, digest = seen[rel]
        if size != listed[rel].get("bytes") or digest != listed[rel].get("sha256"):
            what = "size" if size != listed[rel].get("bytes") else "sha256"
            raise _damaged(archive, f"{DATA_PREFIX}{rel} does not match the manifest ({what} differs): the archive "
                                    "was changed or damaged after export")
    datasets = [d for d in manifest.get("datasets", []) if isinstance(d, dict)]
    for item in datasets:
        try:
            if item.get("kind") == "hub-copy":
                counts = localdata.split_rows(localdata.saved_splits(staging / item["path"]))
            else:
                data = localdata.detect(staging / item["path"], item.get("subset"))
                counts = localdata.check(data, item.get("answers", localdata.DEFAULT_ANSWERS))
        except (KeyError, TypeError):
            raise _damaged(archive, f"{MANIFEST} has a malformed dataset entry") from None
        except DataError as err:
            raise _damaged(archive, f"dataset {item['path']}: {err}") from None
        if counts != item.get("splits"):
            raise _damaged(archive, f"dataset {item['path']}: rows {counts} differ from the manifest's "
                                    f"{item.get('splits')}")
    return datasets


def import_archive(archive: Path, data_dir: Path, replace: bool = False) -> TransferReport:
    """Verify ``archive`` completely, then move its files into ``data_dir``. Files already there with the same
    content are left alone; different ones are replaced only with ``replace``."""
    if not archive.is_file():
        raise UsageError(f"{archive}: no such file")
    created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # removed again if nothing lands
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()
    report = TransferReport(archive=archive, data_dir=data_dir)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=data_dir))
    imported = False
    try:
        manifest, seen = _extract(archive, staging)
        datasets = _verify(archive, manifest, seen, staging)
        moves: list[tuple[Path, Path]] = []
        conflicts: list[str] = []
        for rel, (_, digest) in sorted(seen.items()):
            target = data_dir / rel
            if target.is_file() and sha256_file(target) == digest:
                continue
            if target.exists() and not replace:
                conflicts.append(rel)
            moves.append((staging / rel, target))
        if conflicts:
            raise UsageError(f"{archive}: {len(conflicts)} file{'s' if len(conflicts) > 1 else ''} in {data_dir} "
                             f"already hold{'s' if len(conflicts) == 1 else ''} different data (first: "
                             f"{conflicts[0]}); pass {setting('replace')} to overwrite them. Nothing was imported")
        _apply(moves, staging)
        changed = {str(t.relative_to(data_dir)) for _, t in moves}
        for item in datasets:
            touched = any(c == item["path"] or c.startswith(item["path"].rstrip("/") + "/") for c in changed)
            report.datasets.append(DatasetReport(item.get("task", ""), item["path"], item.get("kind", ""),
                                                 item["splits"], "imported" if touched else "unchanged"))
        report.files = len(moves)
        report.bytes = sum(size for size, _ in seen.values())
        imported = True
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not imported:
            for folder in created:  # deepest first: only the empty folders this call made
                try:
                    folder.rmdir()
                except OSError:
                    break


def _apply(moves: list[tuple[Path, Path]], staging: Path) -> None:
    """Move staged files into place; on any failure put back what was there before."""
    backup = staging / ".replaced"
    done: list[tuple[Path, Path | None]] = []
    try:
        for i, (source, target) in enumerate(moves):
            target.parent.mkdir(parents=True, exist_ok=True)
            saved = None
            if target.exists():
                saved = backup / str(i)
                saved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, saved)
            done.append((target, saved))
            os.replace(source, target)
    except BaseException:
        for target, saved in reversed(done):
            target.unlink(missing_ok=True)
            if saved is not None:
                os.replace(saved, target)
        raise
