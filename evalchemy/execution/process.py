"""Child processes the run starts (the lm-eval worker, the embedded model server): each in its own process group,
stopped by its own process id, never by name."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the group led by ``proc``, SIGKILL it after ``grace_s``; also reaps what an exited leader left."""
    if proc.poll() is not None:
        try:  # children the leader left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def die_with_parent() -> None:
    """``preexec_fn`` for children: the kernel kills them if the runner dies, even by kill -9 (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
