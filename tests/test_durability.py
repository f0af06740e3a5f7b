"""A full disk, an unwritable --output, and signals at awkward moments: the run ends with the documented exit code, a
message that names the path, and a summary that agrees with the exit code whenever there is room for one."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from evalchemy.config.model import load_schema
from evalchemy.testing.server import TestServer
from tests.conftest import PROJECT
from tests.test_run import FAVOURED, GENERATIONS, assets, demo_config, run_cli  # noqa: F401 - fixture

CAPITALS_ONLY = {"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}}


# ---------------------------------------------------------------------------------------------------------------
# helpers: a small real filesystem, a webhook receiver, the CLI as a process


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs: a real filesystem that fills up (and can be made read-only). Needs root with CAP_SYS_ADMIN."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a small filesystem here: no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def full_ext4(tmp_path):
    """A loop-mounted 4 MB ext4 filesystem (no blocks reserved for root), filled to the last block: unlike tmpfs,
    creating a folder there needs a free block."""
    image, mount_point = tmp_path / "ext4.img", tmp_path / "ext4"
    mount_point.mkdir()
    image.write_bytes(b"")
    os.truncate(image, 4 << 20)
    try:
        made = subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], capture_output=True, text=True)
        mounted = made.returncode == 0 and subprocess.run(
            ["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True)
    except FileNotFoundError as err:
        pytest.skip(f"cannot make an ext4 filesystem here: {err}")
    if not mounted or mounted.returncode != 0:
        pytest.skip("cannot loop-mount an ext4 image here (needs root, loop devices and mkfs.ext4): "
                    f"{made.stderr.strip() or mounted.stderr.strip()}")
    (mount_point / "o").mkdir()
    for number in range(10):  # ext4 frees and reserves blocks lazily: fill, sync, again until nothing is left
        handle = os.open(mount_point / f"filler{number}", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(handle, b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(handle)
        os.sync()
        if os.statvfs(mount_point).f_bavail == 0:
            break
    assert os.statvfs(mount_point).f_bavail == 0
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(fs: Path, free_kb: int) -> Path:
    """Fill the filesystem with one file, then shrink it so that exactly ``free_kb`` KB stay free."""
    filler = fs / "filler"
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(handle, b"\0" * 65536)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(handle)
    os.truncate(filler, filler.stat().st_size - free_kb * 1024)
    assert os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize == free_kb * 1024
    return filler


class Hook:
    """A webhook receiver on 127.0.0.1: keeps each POSTed JSON body and answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.bodies: list[dict] = []
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                hook.arrived.set()
                time.sleep(hook.delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hooks/evalchemy"

    def __enter__(self) -> "Hook":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _start(srv, config: Path, out: Path, run_id: str, assets, *extra) -> subprocess.Popen:  # noqa: F811
    return subprocess.Popen([str(PROJECT / "run_evalchemy.sh"), "--endpoint", srv.base_url, "--config", str(config),
                             "--output", str(out), "--run-id", run_id, "--include-path", str(assets["tasks_dir"]),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def _wait_for(condition, what: str, timeout: float = 120.0, step: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def _summary(out: Path, run_id: str) -> dict:
    return json.loads((out / run_id / f"evalchemy_summary_{run_id}.json").read_text(encoding="utf-8"))


def _assert_gone(pids: list[str]) -> None:
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "a child process outlived the run"


# ---------------------------------------------------------------------------------------------------------------
# a full disk


@pytest.mark.parametrize("free_kb", [0, 24, 60])
def test_full_disk_ends_with_exit_4_a_message_and_the_summary_when_it_fits(assets, write_config, small_fs, free_kb):
    """Output on a filesystem with 0, 24 or 60 KB left: exit 4 (not 1), no traceback, stderr names the run folder
    and the space left, the summary is written when it fits (24 and 60 KB: room is reserved for it at the start)
    and agrees with the exit code, the notification is sent, and no temporary file is left behind."""
    config = write_config(demo_config())
    out = small_fs / "o"
    out.mkdir()
    filler = fill(small_fs, free_kb)
    with TestServer(assets["tokenizer"], "test-model",
                    answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv, Hook() as hook:
        done = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(out), "--run-id", "full",
                       "--include-path", str(assets["tasks_dir"]), "--notify-url", hook.url)
    run_dir = out / "full"
    summary_path = run_dir / "evalchemy_summary_full.json"
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "Logging error" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert re.fullmatch(rf"error: disk full: {re.escape(str(run_dir))} \(\d+ KB free\): benchmark\(s\) [a-z_, ]+ "
                        r"failed for lack of space; free some space \(or pass another --output\), then run the same "
                        r"--run-id again to resume", errors[0]), errors
    assert len(hook.bodies) == 1 and hook.bodies[0]["exit_code"] == 4
    if free_kb == 0:
        assert not summary_path.exists()
        assert re.fullmatch(rf"error: disk full: {re.escape(str(summary_path))} could not be written \(0 KB free on "
                            r"its filesystem\): the run's outcome \(exit code 4\) is only in this message and the "
                            r"notification", errors[1]), errors
        assert done.stdout == ""
    else:
        assert len(errors) == 1, errors
        assert done.stdout == f"{summary_path}\n"
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
        assert summary["exit_code"] == 4 and summary["status"] in ("failed", "partial")
        assert summary["error"].startswith("disk full (") and str(run_dir) in summary["error"]
        assert hook.bodies[0]["status"] == summary["status"]
    assert not list(run_dir.rglob("*.tmp"))

    if free_kb == 24:  # the message's advice works: free space, run the same --run-id again
        filler.unlink()
        with TestServer(assets["tokenizer"], "test-model",
                        answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
            again = run_cli("--endpoint", srv.base_url, "--config", str(config), "--output", str(out), "--run-id",
                            "full", "--include-path", str(assets["tasks_dir"]))
        assert again.returncode == 0, again.stderr
        assert _summary(out, "full")["status"] == "success"


def test_no_room_for_the_run_folder_is_exit_3_before_anything_runs(assets, write_config, full_ext4):
    """ext4 with no block free: the run folder cannot even be created: exit 3 (nothing was run) with a message
    naming the output folder and the space left, not exit 1 with a traceback; no request is sent."""
    out = full_ext4 / "o"
    with TestServer(assets["tokenizer"], "test-model") as srv:
        done = run_cli("--endpoint", srv.base_url, "--config", str(write_config(demo_config())), "--output", str(out),
                       "--run-id", "r", "--include-path", str(assets["tasks_dir"]))
        sent = len(srv.requests)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines()[-1] == (f"error: disk full: no room for the run's folder and logs in {out} "
                                            "(0 KB free); nothing was run; free some space or pass another --output")
    assert "Traceback" not in done.stderr
    assert sent == 0 and not (out / "r").exists()


def test_full_disk_lock_file_still_locks(tmp_path, small_fs):
    """With no byte free the lock still holds (its holder details are optional): a second taker gets exit 5's
    error, not an OSError."""
    from evalchemy.errors import LockHeldError
    from evalchemy.execution.lock import RunLock

    fill(small_fs, 0)
    with RunLock(small_fs, "first"):
        with pytest.raises(LockHeldError, match=f"another run holds the lock on {small_fs}: pid \\?"):
            RunLock(small_fs, "second").acquire()


# ---------------------------------------------------------------------------------------------------------------
# --output that cannot be written


@pytest.fixture
def read_only_fs(small_fs):
    (small_fs / "results").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    return small_fs


def _run_into(invoke, write_config, assets, output: Path):  # noqa: F811
    return invoke("--endpoint", "http://127.0.0.1:9", "--config", str(write_config(demo_config())), "--output",
                  str(output), "--run-id", "r", "--include-path", str(assets["tasks_dir"]))


@pytest.mark.parametrize("where", ["results", "results/new"])
def test_read_only_output_is_a_usage_error(invoke, write_config, assets, read_only_fs, where):
    """A read-only --output (existing, or to be created inside a read-only folder): exit 2 before anything runs,
    naming the folder and the fix (a check that creates a file: permission bits do not stop root)."""
    output = read_only_fs / where
    result = _run_into(invoke, write_config, assets, output)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: --output {output}: cannot create files in {read_only_fs / 'results'} (Read-only file system); "
        "pass --output a folder you can write to, or make this one writable")
    assert "Traceback" not in result.stderr
    assert not (read_only_fs / "results" / "new").exists()


@pytest.mark.parametrize("where", ["file", "file/sub", "folder/r"])
def test_output_naming_a_file_is_a_usage_error(invoke, write_config, assets, tmp_path, where):
    """--output naming a file (or a path under a file, or a run folder that is a file): exit 2 before anything
    runs, naming the file and the fix."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "r").write_text("not a folder")
    output = tmp_path / ("folder" if where == "folder/r" else where)
    result = _run_into(invoke, write_config, assets, output)
    assert result.exit_code == 2, result.stderr
    culprit = tmp_path / ("folder/r" if where == "folder/r" else "file")
    assert result.stderr.splitlines()[-1] == (
        f"error: --output {output}: {culprit} is a file, not a folder; pass --output a folder (it is created if "
        "missing)")
    assert (tmp_path / "file").read_text() == "not a folder"
    assert not (tmp_path / "folder" / ".evalchemy.execution.lock").exists()


# ---------------------------------------------------------------------------------------------------------------
# late and repeated signals


@pytest.mark.parametrize("delay_ms", [0, 5, 10, 20, 40, 70, 100])
def test_signal_after_the_last_benchmark_finished(assets, write_config, tmp_path, delay_ms):
    """SIGTERM 0-100 ms after the last benchmark's results file appeared: the run is complete; it exits with its
    summary's code (0, success), never 143 beside a summary that says 0, and leaves no child process."""
    config = write_config(CAPITALS_ONLY)
    out = tmp_path / "o"
    results = out / "late" / "capitals_results.json"
    with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED)}) as srv:
        proc = _start(srv, config, out, "late", assets)
        _wait_for(results.exists, "the results file")
        children = _children(proc.pid)
        time.sleep(delay_ms / 1000)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    summary = _summary(out, "late")
    assert proc.returncode == summary["exit_code"] == 0, stderr
    assert summary["status"] == "success"
    assert "Traceback" not in stderr
    _assert_gone(children)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_second_signal_does_not_abort_the_clean_up(assets, write_config, tmp_path, sig, code):
    """Two signals 20 ms apart mid-benchmark (TERM,TERM or INT,INT): the first stops the run, the second does not
    cut its clean-up short: exit 143/130, a summary 'interrupted' with that code, no worker left, lock released."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]},
                                          "echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    out = tmp_path / "o"
    with TestServer(assets["tokenizer"], "test-model", latency=0.2,
                    answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
        proc = _start(srv, config, out, "twice", assets, "--concurrency", "1", "--batch-size", "1")
        _wait_for(lambda: len(srv.requests) >= 3, "requests", step=0.05)
        children = _children(proc.pid)
        assert children
        proc.send_signal(sig)
        time.sleep(0.02)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    summary = _summary(out, "twice")
    assert summary["status"] == "interrupted" and summary["exit_code"] == code
    assert summary["error"] == f"interrupted by {signal.Signals(sig).name}"
    assert summary["benchmarks"]["echo"]["error"] == "not run: run interrupted"
    assert "Traceback" not in stderr
    _assert_gone(children)
    assert not (out / ".evalchemy.execution.lock").read_text()  # released


@pytest.mark.parametrize("sigs", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)])
def test_signal_during_the_notification(assets, write_config, tmp_path, sigs):
    """Signals while the --notify-url POST waits for its answer: the notification is still delivered and the run
    exits with its summary's code (0), saying why it did not stop."""
    config = write_config(CAPITALS_ONLY)
    out = tmp_path / "o"
    with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED)}) as srv, \
            Hook(delay=1.5) as hook:
        proc = _start(srv, config, out, "notify", assets, "--notify-url", hook.url)
        _wait_for(hook.arrived.is_set, "the notification", step=0.01)
        for sig in sigs:
            proc.send_signal(sig)
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=60)
    summary = _summary(out, "notify")
    assert proc.returncode == summary["exit_code"] == 0, stderr
    assert hook.bodies[0]["status"] == "success" and hook.bodies[0]["exit_code"] == 0
    names = ", ".join(signal.Signals(s).name for s in sigs)
    assert (f"WARNING {names} received while sending the notification: it was still sent; exit code 0, as the "
            "summary says") in stderr.splitlines()
    run_log = (out / "notify" / "evalchemy_notify.log").read_text(encoding="utf-8")
    port = hook.url.split(":")[2].split("/")[0]
    assert f"notified http://127.0.0.1:{port}/… (HTTP 200)" in run_log


def test_internal_error_during_the_run_still_writes_a_summary_that_says_exit_1(assets, write_config, tmp_path):
    """A bug inside the run (here a progress callback that raises) still stops the worker and writes the summary,
    status failed and exit_code 1 as the CLI then exits, before the error goes on to the CLI."""
    from evalchemy import plan as plan_mod
    from evalchemy.execution import runner
    from evalchemy.cli.app import _load

    includes = (assets["tasks_dir"],)
    cfg, index = _load(write_config(CAPITALS_ONLY), includes)
    plan = plan_mod.build_plan(cfg, plan_mod.LocalTasks(data_dir=tmp_path / "data", home=tmp_path), index,
                               include_paths=includes)

    class Broken(runner.Events):
        def benchmark_started(self, bench, position, total):
            raise RuntimeError("the progress display broke")

    with TestServer(assets["tokenizer"], "test-model", answers={"favoured": sorted(FAVOURED)}) as srv:
        opts = runner.RunOptions(endpoint=srv.base_url, run_id="bug", output_dir=tmp_path / "o", home=tmp_path)
        with pytest.raises(RuntimeError, match="the progress display broke"):
            runner.execute(opts, cfg, plan, Broken(), index=index)
    summary = _summary(tmp_path / "o", "bug")
    assert (summary["status"], summary["exit_code"]) == ("failed", 1)
    assert summary["error"] == "internal error: RuntimeError: the progress display broke"
    assert summary["benchmarks"]["capitals"]["error"] == "not run: internal error"
