"""One run at a time per output folder: an advisory lock that dies with its process (kill -9, reboot)."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from evalchemy.errors import LockHeldError, setting

LOCK_NAME = ".evalchemy.execution.lock"


class RunLock:
    """``flock`` on ``<output>/.evalchemy.execution.lock``; the file also says who holds it, for the message."""

    def __init__(self, output_dir: Path, run_id: str):
        self.path = output_dir / LOCK_NAME
        self.run_id = run_id
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            raise LockHeldError(
                f"another run holds the lock on {self.path.parent}: pid {holder.get('pid', '?')}, "
                f"run id {holder.get('run_id', '?')}, started {holder.get('started_at', '?')}; "
                f"wait for it to finish, or use another {setting('output')}"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "run_id": self.run_id,
                "started_at": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
        try:
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
        except OSError:  # a full disk: the lock holds without the holder's details (only the message uses them)
            os.ftruncate(fd, 0)
        self._fd = fd

    @staticmethod
    def _read_holder(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
