"""The output folder's filesystem: checked before a run (a folder this process can write in), and a full disk during
a run met with a message that names the path and the free space, instead of a traceback.

A full disk (ENOSPC, a quota, SQLite's "database or disk is full") never stops the run by itself: the run reserves
room for its summary when it starts (``reserve_summary_space``) and gives it back just before writing it; a results
file or the summary that does not fit is retried once after removing what is disposable (the run's temporary
``.tmp`` files, then, if that did not free enough, its request cache); a run log line that does not fit is dropped
and counted. What still cannot be written is reported by the CLI, and the run ends with exit code 4.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from evalchemy.errors import EXIT_BENCHMARKS_FAILED, EvalchemyError, PreflightError, UsageError, setting
from evalchemy.results.summary import write_json_atomic

_OUTPUT = setting("output")

logger = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded", "disk full")
REQUEST_CACHE = ".request_cache"
SUMMARY_RESERVE = ".summary-reserve.tmp"
PAGE = 4096


class DiskFullError(EvalchemyError):
    """A file of the run could not be written for lack of space, even after removing disposable files."""

    exit_code = EXIT_BENCHMARKS_FAILED

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"disk full: {path} could not be written ({free_space(path)} on its filesystem)")


def is_disk_full(err: BaseException | str | None) -> bool:
    """An OSError with ENOSPC/EDQUOT, or an error (or error text, as the worker reports it) that says so."""
    if err is None:
        return False
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    text = str(err).lower()
    return any(marker in text for marker in DISK_FULL_TEXTS)


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def free_space(path: Path) -> str:
    """``"24 KB free"``: the space left to this process on the filesystem holding ``path``."""
    free = free_bytes(path)
    if free is None:
        return "free space unknown"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20)):
        if free >= 10 * size:
            return f"{free // size} {unit} free"
    return f"{free // 1024} KB free"


def check_output_dir(output: Path, run_id: str) -> None:
    """``--output`` must be (or be creatable as) a folder this process can create files in. Permission bits do not
    bind root, so the check creates and removes a folder with a file in it (as the run will). UsageError when it
    is a file or not writable; PreflightError when its filesystem has no room left for them."""
    for path in (output, output / run_id):
        if os.path.lexists(path) and not path.is_dir():
            raise UsageError(f"{_OUTPUT} {output}: {path} is a file, not a folder; pass {_OUTPUT} a folder "
                             "(it is created if missing)")
    existing = _existing(output / run_id)
    if not existing.is_dir():
        raise UsageError(f"{_OUTPUT} {output}: {existing} is a file, not a folder; pass {_OUTPUT} a folder "
                         "(it is created if missing)")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".evalchemy-write-check-", dir=existing))
        try:
            (probe / "file").touch()
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as err:
        if is_disk_full(err):
            raise no_room_to_start(output) from None
        raise UsageError(f"{_OUTPUT} {output}: cannot create files in {existing} ({err.strerror}); pass {_OUTPUT} a "
                         "folder you can write to, or make this one writable") from None


def summary_space_estimate(benchmarks: int, runs: int) -> int:
    """Bytes a summary takes, generously: a few KB, plus about 2 KB a benchmark and 1 KB an lm-eval invocation."""
    return 4 * PAGE + 2048 * benchmarks + 1024 * runs


def reserve_summary_space(run_dir: Path, size: int) -> int:
    """Hold up to ``size`` bytes (as much as fits) in a temporary file of the run folder, so that a disk filled
    during the run still has room for the summary. Returns the bytes held."""
    held = 0
    try:
        handle = os.open(run_dir / SUMMARY_RESERVE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return 0
    try:
        os.posix_fallocate(handle, 0, size)  # real blocks, even where zeros would be compressed away
        held = size
    except OSError:  # no room for all of it (or no fallocate here): as many pages as fit
        try:
            while held < size:
                held += os.write(handle, b"\0" * min(PAGE, size - held))
        except OSError:
            pass
    finally:
        os.close(handle)
    return held


def release_summary_space(run_dir: Path) -> None:
    try:
        (run_dir / SUMMARY_RESERVE).unlink()
    except OSError:
        pass


def no_room_to_start(output: Path) -> PreflightError:
    return PreflightError(f"disk full: no room for the run's folder and logs in {output} ({free_space(output)}); "
                          "nothing was run; free some space or pass another --output")


@contextmanager
def room_to_start(output: Path):
    """Taking the lock and creating the run folder and its logs: a full disk there means nothing was run
    (PreflightError naming the folder and the space left), not an internal error."""
    try:
        yield
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise no_room_to_start(output) from None


def _remove_disposable(run_dir: Path, needed: int) -> list[str]:
    """Remove the run's temporary files (not the summary's reserve); if that leaves less than ``needed`` bytes free,
    also its request cache (it only spares re-sending requests on a resumed run). Returns what was removed,
    relative to ``run_dir``."""
    removed = []
    for tmp in sorted(run_dir.rglob("*.tmp")):
        if tmp.is_file() and tmp.name != SUMMARY_RESERVE:
            try:
                tmp.unlink()
                removed.append(str(tmp.relative_to(run_dir)))
            except OSError:
                pass
    cache = run_dir / REQUEST_CACHE
    free = free_bytes(run_dir)
    if cache.exists() and (free is None or free < needed):
        shutil.rmtree(cache, ignore_errors=True)
        removed.append(REQUEST_CACHE + "/")
    return removed


def write_json_with_room(path: Path, data: object, run_dir: Path) -> None:
    """``write_json_atomic``; on a full disk, remove the disposable files and try once more. DiskFullError if it
    still does not fit."""
    try:
        write_json_atomic(path, data)
        return
    except OSError as err:
        if not is_disk_full(err):
            raise
    needed = len(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False).encode()) + 8192
    removed = _remove_disposable(run_dir, needed)
    logger.warning("disk full writing %s (%s); removed %s and trying once more", path, free_space(path),
                   ", ".join(removed) or "nothing (no temporary files)")
    try:
        write_json_atomic(path, data)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path) from None
        raise


class RunLogHandler(logging.FileHandler):
    """A run log that outlives a full disk: a record that does not fit is dropped and counted (``dropped``) instead
    of printing a logging traceback on stderr for every line; the file is reopened for the next record."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self.dropped = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        err = sys.exc_info()[1]
        if err is None or not is_disk_full(err):
            super().handleError(record)
            return
        self.dropped += 1
        stream, self.stream = self.stream, None  # FileHandler.emit reopens it (append) for the next record
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
