"""Credentials never reach a file, a log or the terminal: under every fault of the test server, through the logging
filter and the worker's streams, in the end-of-run scan of the run folder, and for --notify-url's basic auth."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from evalchemy import redaction
from evalchemy.backends.echo_check import CHECK_REQUESTS
from evalchemy.config.model import load_schema
from evalchemy.testing.server import TestServer
from tests.test_run import FAVOURED, GENERATIONS, assets, run_cli  # noqa: F401 - fixture

KEY = "sk-test-NEVER-WRITTEN-31337"
# one multiple-choice question (4 log-likelihood requests) and one generation: both request kinds, quickly
SMALL = {
    "benchmarks": {"capitals": {"enabled": True, "tasks": ["cap"]}, "echo": {"enabled": True, "tasks": ["gen"]}},
    "tasks": {"cap": {"enabled": True, "tasks": ["demo_capitals"], "limit": 1},
              "gen": {"enabled": True, "tasks": ["demo_echo"], "limit": 1}},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _files_with(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def _refused_run(assets, write_config, out: Path, run_id: str, *flags: str, env: dict | None = None):
    """A run against a port nobody listens on: preflight fails (exit 3) in about a second, the summary is written."""
    config = write_config({"benchmarks": {"echo": {"enabled": True, "tasks": ["demo_echo"]}}})
    return run_cli("--endpoint", f"http://127.0.0.1:{_free_port()}", "--config", str(config), "--output", str(out),
                   "--run-id", run_id, "--include-path", str(assets["tasks_dir"]), *flags, env=env)


def _summary(out: Path, run_id: str) -> dict:
    return json.loads((out / run_id / f"evalchemy_summary_{run_id}.json").read_text(encoding="utf-8"))


# (server options, extra flags, task timeout, exit code[, benchmarks]): every fault mode of the test server
FAULTS = {
    "no fault": ({}, [], None, 0),
    "fail_first (500, retried)": ({"fail_first": 2}, [], None, 0),
    "fail_status 500": ({"fail_status": 500}, [], None, 4),
    "fail_status 401": ({"fail_status": 401}, [], None, 4),
    "fail_echo_headers": ({"fail_echo_headers": True}, [], None, 4),
    "fail_echo_headers, one request at a time": ({"fail_echo_headers": True}, ["--concurrency", "1"], None, 4),
    # the preflight's echo check has the first answers: lm-eval's first request gets the failure
    "fail_echo_headers once, then answers": ({"fail_first": 1 + CHECK_REQUESTS, "fail_echo_headers": True}, [], None, 0),
    "hang_after: request timeout": ({"hang": 30, "hang_after": 1}, ["--request-timeout", "1"], None, 4,
                                    ("capitals",)),
    "hang: task timeout kills the worker": ({"hang": 30}, [], 2, 4),
    "malformed": ({"malformed": True}, [], None, 4),
    "no_logprobs": ({"no_logprobs": True}, [], None, 4),
    "null_text": ({"null_text": True}, [], None, 4),
    "die_after, then refused connections": ({"die_after": 1}, ["--concurrency", "1"], None, 4),
    "refused connection": (None, [], None, 3),
    "wrong key: 401 at preflight": ({"api_key": "sk-the-server-wants-another"}, [], None, 3),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_api_key_is_written_nowhere_under_any_fault(assets, write_config, tmp_path, fault):
    """With OPENAI_API_KEY set, under every fault mode of the test server (and a refused connection), the key is in
    no file under the run folder and not on stdout or stderr; the source filters alone kept it out (the final scan
    found nothing to overwrite)."""
    options, flags, task_timeout, exit_code, *benchmarks = FAULTS[fault]
    config = json.loads(json.dumps(SMALL))
    for name in set(config["benchmarks"]) - set(benchmarks[0] if benchmarks else config["benchmarks"]):
        config["benchmarks"][name]["enabled"] = False
    if task_timeout:
        for entry in config["tasks"].values():
            entry["timeout"] = task_timeout
    out = tmp_path / "o"
    args = ["--config", str(write_config(config)), "--output", str(out), "--run-id", "r", "--include-path",
            str(assets["tasks_dir"]), "--batch-size", "1", "--log-level", "DEBUG", *flags]
    if options is None:
        done = run_cli("--endpoint", f"http://127.0.0.1:{_free_port()}", *args, env={"OPENAI_API_KEY": KEY})
    else:
        server_options = {"api_key": KEY, **options}
        with TestServer(assets["tokenizer"], "test-model", **server_options,
                        answers={"favoured": sorted(FAVOURED), "generations": GENERATIONS}) as srv:
            done = run_cli("--endpoint", srv.base_url, *args, env={"OPENAI_API_KEY": KEY})
    assert done.returncode == exit_code, done.stderr
    assert KEY not in done.stdout + done.stderr
    run_dir = out / "r"
    assert _files_with(run_dir, KEY.encode()) == []
    summary = _summary(out, "r")
    Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
    assert summary["secrets"] == {"scrubbed_files": [], "failed_files": []}
    if options and options.get("fail_echo_headers"):  # the server did echo the key, and the log shows it redacted
        log = (run_dir / "capitals_benchmark.log").read_text(encoding="utf-8")
        assert '\\"Authorization\\": \\"***\\"' in log


def test_final_scan_overwrites_the_key_in_every_kind_of_file(tmp_path, caplog):
    """The end-of-run scan finds the key in text, binary and sqlite files (hidden folders included), overwrites it
    with as many '*' so the sqlite database stays valid, leaves files without it and links alone, and names the
    files, not the key, in a warning."""
    run_dir = tmp_path / "run"
    (run_dir / ".request_cache").mkdir(parents=True)
    (run_dir / "bench_benchmark.log").write_text(f"Authorization: Bearer {KEY}\nagain {KEY}\n", encoding="utf-8")
    (run_dir / "clean.json").write_text('{"score": 1}\n', encoding="utf-8")
    (run_dir / "empty.txt").write_bytes(b"")
    (run_dir / "raw.bin").write_bytes(b"\x00\xff" + KEY.encode() + b"\x00")
    database = run_dir / ".request_cache" / "cache.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cache (key TEXT PRIMARY KEY, value BLOB)")
        db.execute("INSERT INTO cache VALUES (?, ?)", (f"k-{KEY}", json.dumps({"header": KEY}).encode()))
    db.close()
    outside = tmp_path / "outside.txt"
    outside.write_text(KEY, encoding="utf-8")
    (run_dir / "link.txt").symlink_to(outside)

    with caplog.at_level(logging.WARNING, logger="evalchemy.redaction"):
        result = redaction.scan_run_folder(run_dir, redaction.Redactor([KEY]))

    assert result == {"scrubbed_files": [".request_cache/cache.db", "bench_benchmark.log", "raw.bin"],
                      "failed_files": []}
    stars = "*" * len(KEY)
    assert (run_dir / "bench_benchmark.log").read_text(encoding="utf-8") == \
        f"Authorization: Bearer {stars}\nagain {stars}\n"
    assert (run_dir / "raw.bin").read_bytes() == b"\x00\xff" + stars.encode() + b"\x00"
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT key, value FROM cache").fetchall() == [
            (f"k-{stars}", json.dumps({"header": stars}).encode())]
    db.close()
    assert outside.read_text(encoding="utf-8") == KEY
    assert [r.getMessage() for r in caplog.records] == [
        "the API key (or another credential) was found in 3 file(s) of the run folder and overwritten with '*': "
        ".request_cache/cache.db, bench_benchmark.log, raw.bin"]


def test_a_key_left_in_the_run_folder_is_overwritten_and_recorded(assets, write_config, tmp_path):
    """A run whose folder holds the key from an earlier attempt (a benchmark log written by an older version, the
    request cache) overwrites it, lists the files in the summary's secrets block and the errors log, and never
    prints the key."""
    out = tmp_path / "o"
    run_dir = out / "r"
    (run_dir / ".request_cache").mkdir(parents=True)
    (run_dir / "capitals_benchmark.log").write_text(f"'Authorization': 'Bearer {KEY}'\n", encoding="utf-8")
    with sqlite3.connect(run_dir / ".request_cache" / "old.db") as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (KEY,))
    db.close()
    done = _refused_run(assets, write_config, out, "r", env={"OPENAI_API_KEY": KEY})
    assert done.returncode == 3, done.stderr
    assert _files_with(out, KEY.encode()) == []
    assert KEY not in done.stdout + done.stderr
    files = [".request_cache/old.db", "capitals_benchmark.log"]
    assert _summary(out, "r")["secrets"] == {"scrubbed_files": files, "failed_files": []}
    warning = ("the API key (or another credential) was found in 2 file(s) of the run folder and overwritten with "
               "'*': .request_cache/old.db, capitals_benchmark.log")
    assert warning in (run_dir / "evalchemy_errors_r.log").read_text(encoding="utf-8")
    assert warning in done.stderr


def test_no_secrets_block_without_a_key(assets, write_config, tmp_path):
    """Without an API key there is nothing to search for: the summary has no secrets block."""
    done = _refused_run(assets, write_config, tmp_path / "o", "r")
    assert done.returncode == 3, done.stderr
    assert "secrets" not in _summary(tmp_path / "o", "r")


def test_log_filter_scrubs_message_arguments_and_exceptions():
    """The logging filter removes the key's value, Authorization header values in every printed form, Bearer tokens
    and URL passwords from the message, its arguments and the exception text; the words 'Bearer token' stay."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(redaction.RedactingFilter(redaction.Redactor([KEY])))
    log = logging.getLogger("tests.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.error("headers=<CIMultiDictProxy('Host': 'h', %r: %r)>", "Authorization", "Bearer sk-not-registered")
        log.warning('Response text: {"message": "headers: {\\"Authorization\\": \\"Basic dXNlcjpwdw==\\"}"}')
        log.warning("Authorization: Bearer sk-another-one\r\nHost: h")
        log.warning("notify http://hook:pw-hook-secret@127.0.0.1:9/x; the key %s; sent as a Bearer token", KEY)
        try:
            raise RuntimeError(f"request failed with Authorization={KEY}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[:6] == [
        "headers=<CIMultiDictProxy('Host': 'h', 'Authorization': '***')>",
        'Response text: {"message": "headers: {\\"Authorization\\": \\"***\\"}"}',
        "Authorization: ***",
        "Host: h",
        "notify http://***@127.0.0.1:9/x; the key ***; sent as a Bearer token",
        "failed",
    ]
    assert lines[-1] == "RuntimeError: request failed with Authorization=***"
    assert KEY not in stream.getvalue() and "sk-" not in stream.getvalue()


def test_scrubbing_stream_catches_a_key_split_across_writes():
    """The worker's stdout/stderr wrapper scrubs whole lines, so a key written in pieces is still caught; a partial
    line (a progress bar redrawn with \\r) is passed on at flush."""
    target = io.StringIO()
    stream = redaction.ScrubbingStream(target, redaction.Redactor([KEY]))
    stream.write("token " + KEY[:5])
    stream.write(KEY[5:] + " end\nprogress 10%\r")
    stream.write("progress 20% " + KEY)
    stream.flush()
    assert target.getvalue() == "token *** end\nprogress 10%\rprogress 20% ***"


class _Hook(BaseHTTPRequestHandler):
    """Records what it receives; answers 401 without the right basic auth."""

    received: list[dict] = []
    expected = ""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                              "body": json.loads(body)})
        self.send_response(204 if self.headers.get("Authorization") == self.expected else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notify_url_credentials_are_sent_as_basic_auth_and_never_written(assets, write_config, tmp_path):
    """user:password@ in --notify-url reaches the hook as HTTP basic auth on the URL without them; the log names the
    host only; neither the password nor the basic-auth token is in any file, log or output. Wrong credentials: the
    401 is logged by host, the exit code is unchanged."""
    password = "pw-NOTIFY-SECRET-5150"
    token = base64.b64encode(f"hookuser:{password}".encode()).decode()
    _Hook.received, _Hook.expected = [], f"Basic {token}"
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    port = hook.server_address[1]
    out = tmp_path / "o"
    try:
        ok = _refused_run(assets, write_config, out, "n1",
                          "--notify-url", f"http://hookuser:{password}@127.0.0.1:{port}/hooks/PATH-SECRET?x=1")
        wrong = _refused_run(assets, write_config, out, "n2",
                             "--notify-url", f"http://hookuser:wrong-{password}@127.0.0.1:{port}/h")
    finally:
        hook.shutdown()
        hook.server_close()
    assert ok.returncode == 3 and wrong.returncode == 3, ok.stderr + wrong.stderr
    assert [(r["path"], r["authorization"], r["body"]["run_id"]) for r in _Hook.received] == [
        ("/hooks/PATH-SECRET?x=1", f"Basic {token}", "n1"),
        ("/h", "Basic " + base64.b64encode(f"hookuser:wrong-{password}".encode()).decode(), "n2")]
    assert f"INFO notified http://127.0.0.1:{port}/… (HTTP 204)\n" in ok.stderr
    assert f"notification to http://127.0.0.1:{port}/… failed: Unauthorized (the run's exit code is unchanged)" \
        in (out / "n2" / "evalchemy_errors_n2.log").read_text(encoding="utf-8")
    for secret in (password, token, "hookuser", "PATH-SECRET"):
        assert secret not in ok.stdout + ok.stderr + wrong.stdout + wrong.stderr, secret
        assert _files_with(out, secret.encode()) == [], secret


def test_notify_url_credentials_split_from_the_url():
    """The Authorization value is built from the decoded user and password, the URL keeps its path and query
    without them, a token given as the user name alone is a secret too, and the log's host-only form brackets IPv6."""
    from evalchemy.execution import notify

    url = "http://hook%20user:p%40ss-word@[::1]:9/x/y?z=1"
    assert notify.split_credentials(url) == (
        "http://[::1]:9/x/y?z=1", "Basic " + base64.b64encode(b"hook user:p@ss-word").decode())
    assert notify.secrets(url) == ("p%40ss-word", "p@ss-word", base64.b64encode(b"hook user:p@ss-word").decode())
    assert notify.secrets("https://TOKEN-abc123@hooks.example/x")[:2] == ("TOKEN-abc123", "TOKEN-abc123")
    assert notify.split_credentials("https://hooks.example/x") == ("https://hooks.example/x", None)
    assert notify.secrets("https://hooks.example/x") == ()
    assert notify.where(url) == "http://[::1]:9/…"


def test_malformed_notify_url_with_credentials_is_a_logged_failure(tmp_path, caplog):
    """A --notify-url that cannot be parsed (an unclosed IPv6 bracket) fails the notification with a warning that
    names no part of it; its password is still known as a secret."""
    from evalchemy.execution import notify

    url = "http://user:pw-broken-123@[::1/hook"
    assert notify.secrets(url)[:2] == ("pw-broken-123", "pw-broken-123")
    summary = {"run_id": "r", "status": "success", "exit_code": 0, "benchmarks": {},
               "breakdown": {"benchmark": {}}}
    with caplog.at_level(logging.WARNING, logger="evalchemy.execution.notify"):
        assert notify.notify(url, summary, tmp_path / "s.json") is False
    assert [r.getMessage() for r in caplog.records] == [
        "notification to the --notify-url host failed: Invalid IPv6 URL (the run's exit code is unchanged)"]
