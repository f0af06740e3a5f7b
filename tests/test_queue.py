"""Runs queued on Celery + Redis and executed by workers (separate processes), their state in a shared
PostgreSQL store: a real redis-server on 127.0.0.1, the PostgreSQL of tests/test_store.py, test servers standing
in for each GPU box's vLLM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from evalchemy.store import db
from evalchemy.testing.server import TestServer
from tests.conftest import PROJECT
from tests.test_store import RUN_A, _favoured, _free_port, postgres, write_assets  # noqa: F401 - fixture

API_KEY = "sk-QUEUE-SECRET-7781"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
pytestmark = pytest.mark.skipif(not Path(REDIS).exists(),
                                reason="redis-server not installed (scripts/test.sh installs Debian's redis-server)")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("queue-assets"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A throw-away redis-server on 127.0.0.1 (no persistence), stopped by its pid."""
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


_databases = iter(range(1, 10_000))


@pytest.fixture
def store(postgres, tmp_path):  # noqa: F811 - the PostgreSQL fixture imported above
    name = f"queue_{os.getpid()}_{next(_databases)}"
    engine = sa.create_engine(db.resolve_url(postgres + "/postgres", tmp_path), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{postgres}/{name}"


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "EVALCHEMY_HOME": str(PROJECT), "EVALCHEMY_QUEUE_HEARTBEAT_S": "1",
           "EVALCHEMY_QUEUE_STALE_S": "5", "EVALCHEMY_QUEUE_RETRY_S": "2", "EVALCHEMY_QUEUE_VISIBILITY_S": "8"}
    env.update(extra)
    return env


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "evalchemy", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


class Workers:
    """Worker processes, each with its own test server (model-x, also serving model-y) and results folder."""

    def __init__(self, assets, redis_url, store, folder: Path, count: int = 2, shared_output: bool = False,
                 **server_options):
        self.servers, self.procs, self.outputs = [], [], []
        for i in range(count):
            srv = TestServer(assets["tokenizer"], "model-x", extra_models=("model-y",), api_key=API_KEY,
                             answers={"favoured": _favoured(RUN_A)}, **server_options).start()
            out = folder / ("results" if shared_output else f"results-{i}")
            log = open(folder / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed in stop()
            proc = subprocess.Popen(
                [sys.executable, "-m", "evalchemy", "worker", "--broker", redis_url, "--store", store,
                 "--endpoint", srv.base_url + "/v1", "--tokenizer", str(assets["tokenizer"]),
                 "--include-path", str(assets["tasks"]), "--output", str(out), "--name", f"w{i}@test"],
                stdout=log, stderr=log, env=_env(OPENAI_API_KEY=API_KEY))
            self.servers.append(srv)
            self.procs.append((proc, log))
            self.outputs.append(out)

    def stop(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)  # cold shutdown
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
        for srv in self.servers:
            srv.stop()


def _submit(redis_url, store, assets, *extra, env=None):
    return cli("submit", "--broker", redis_url, "--store", store, "--config", str(assets["config"]),
               "--include-path", str(assets["tasks"]), *extra, env=env)


def _status(store, *run_ids) -> list[dict]:
    done = cli("status", "--store", store, "--json", *run_ids)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["runs"]


def _wait(store, run_ids, seconds=240) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = _status(store, *run_ids)
        if all(r["state"] in ("SUCCESS", "FAILURE", "REVOKED") for r in runs):
            return runs
        time.sleep(1.0)
    raise AssertionError(f"runs not ended in {seconds} s: {runs}")


def _table(store, query: str) -> list:
    engine = sa.create_engine(db.resolve_url(store, Path(".")))
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(query))]
    finally:
        engine.dispose()


def _redis_dump(redis_url) -> bytes:
    import redis

    client = redis.Redis.from_url(redis_url)
    dump = b""
    for key in client.scan_iter("*"):
        kind = client.type(key)
        dump += key
        if kind == b"string":
            dump += client.get(key) or b""
        elif kind == b"list":
            dump += b"".join(client.lrange(key, 0, -1))
        elif kind == b"hash":
            dump += b"".join(k + v for k, v in client.hgetall(key).items())
        elif kind == b"set":
            dump += b"".join(client.smembers(key))
        elif kind == b"zset":
            dump += b"".join(client.zrange(key, 0, -1))
    return dump


def test_bad_config_is_exit_2_and_nothing_is_queued(tmp_path, redis_url, store, assets):
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": {"x": {"tasks": ["nope"]}}}', encoding="utf-8")
    done = cli("submit", "--broker", redis_url, "--store", store, "--config", str(bad))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    import redis

    assert redis.Redis.from_url(redis_url).llen("evalchemy") == 0
    assert _status(store) == []


def test_redis_down_at_submit_is_exit_3_and_nothing_is_queued(redis_url, store, assets):
    closed = f"redis://127.0.0.1:{_free_port()}/0"
    done = _submit(closed, store, assets, "--run-id", "nowhere")
    assert done.returncode == 3
    assert done.stdout == ""
    assert f"error: broker {closed} cannot be reached" in done.stderr
    assert "nothing was queued" in done.stderr
    assert _status(store) == []


def test_five_runs_two_models_two_workers(tmp_path, redis_url, store, assets):
    """Every run ends once, the two workers share them, the leaderboard shows both models, no key anywhere."""
    workers = Workers(assets, redis_url, store, tmp_path)
    try:
        ids = []
        for i, model in enumerate(["model-x", "model-y", "model-x", "model-y", "model-x"]):
            done = _submit(redis_url, store, assets, "--model", model, "--run-id", f"q{i}")
            assert done.returncode == 0, done.stderr
            assert done.stdout == f"q{i}\n"
            ids.append(f"q{i}")
        runs = _wait(store, ids)
        assert [(r["run_id"], r["state"], r["status"], r["exit_code"]) for r in runs] == [
            (i, "SUCCESS", "success", 0) for i in ids]
        assert all(r["host"] and r["started_at"] and r["finished_at"] for r in runs)
        text = cli("status", "--store", store, *ids).stdout.splitlines()
        assert text[0].split() == ["RUN", "ID", "STATE", "HOST", "STATUS", "EXIT", "SUBMITTED", "(UTC)", "STARTED",
                                   "FINISHED"]
        assert [line.split()[:5] for line in text[1:]] == [[r["run_id"], "SUCCESS", r["host"], "success", "0"]
                                                          for r in runs]
        assert len({line.index("SUCCESS") for line in text[1:]} | {text[0].index("STATE")}) == 1  # aligned
        rows = _table(store, "SELECT worker, attempts FROM queue_runs")
        per_worker = {w: sum(1 for r in rows if r[0] == w) for w in ("w0@test", "w1@test")}
        assert sum(per_worker.values()) == 5 and min(per_worker.values()) >= 1, per_worker
        assert {r[1] for r in rows} == {1}  # each executed exactly once
        assert sorted(_table(store, "SELECT run_id FROM runs")) == [(i,) for i in ids]
        for n, out in enumerate(workers.outputs):  # each run's folder is on the box that ran it, only there
            mine = {r[0] for r in _table(store, f"SELECT run_id FROM queue_runs WHERE worker = 'w{n}@test'")}
            assert {i for i in ids if (out / i / f"evalchemy_summary_{i}.json").is_file()} == mine
        board = cli("leaderboard", "--json", "--store", store)
        assert board.returncode == 0, board.stderr
        assert [(r["model"], r["value"]) for r in json.loads(board.stdout)["rows"]] == [
            ("model-x", 19 / 20), ("model-y", 19 / 20)]
        assert API_KEY.encode() not in _redis_dump(redis_url)
        dump = "\n".join(str(r) for table in ("runs", "queue_runs", "benchmarks", "scores", "samples")
                         for r in _table(store, f"SELECT * FROM {table}"))
        assert API_KEY not in dump
        assert sum(len(s.requests) for s in workers.servers) > 0
    finally:
        workers.stop()


def _wait_for(predicate, seconds=120, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _lm_eval_requests(srv) -> list[dict]:
    """The requests lm-eval sent (not the preflight's echo check, whose requests carry a logit_bias)."""
    return [body for body in srv.requests if "logit_bias" not in body]


def _prompts(srv) -> list[str]:
    found = []
    for body in _lm_eval_requests(srv):
        prompt = body.get("prompt")
        found += [json.dumps(p) for p in (prompt if isinstance(prompt, list) and prompt and not isinstance(
            prompt[0], int) else [prompt])]
    return found


def test_a_worker_killed_mid_run_leaves_it_to_the_other(tmp_path, redis_url, store, assets):
    """kill -9 of the worker running it: the message comes back (late acknowledgement), the other worker takes
    over the dead claim, resumes from the shared results folder and finishes; every question scored once."""
    workers = Workers(assets, redis_url, store, tmp_path, shared_output=True, latency=0.25)
    try:
        done = _submit(redis_url, store, assets, "--run-id", "killed", "--model", "model-x", "--batch-size", "1",
                       "--concurrency", "2")
        assert done.returncode == 0, done.stderr
        _wait_for(lambda: sum(len(_lm_eval_requests(s)) for s in workers.servers) >= 10, what="requests")
        holder = _table(store, "SELECT worker FROM queue_runs")[0][0]
        first = int(holder[1])
        workers.procs[first][0].kill()  # SIGKILL: its run (a child that dies with it) goes too
        workers.procs[first][0].wait()
        answered_before = len(_prompts(workers.servers[first]))
        runs = _wait(store, ["killed"], seconds=240)
        assert [(r["state"], r["status"], r["exit_code"]) for r in runs] == [("SUCCESS", "success", 0)]
        assert _table(store, "SELECT worker, attempts FROM queue_runs") == [(f"w{1 - first}@test", 2)]
        summary = json.loads((workers.outputs[0] / "killed" / "evalchemy_summary_killed.json").read_text())
        assert summary["status"] == "success"
        assert _table(store, "SELECT status FROM runs WHERE run_id = 'killed'") == [("success",)]
        assert _table(store, "SELECT count(*) FROM samples WHERE run_id = 'killed'") == [(20,)]
        assert _table(store, "SELECT value FROM benchmarks WHERE run_id = 'killed'") == [(19 / 20,)]
        first_prompts, second_prompts = _prompts(workers.servers[first]), _prompts(workers.servers[1 - first])
        assert answered_before >= 10 and second_prompts
        assert len(set(second_prompts)) == len(second_prompts)
    finally:
        workers.stop()


def test_cancel_revokes_a_queued_run_and_interrupts_a_running_one(tmp_path, redis_url, store, assets):
    done = _submit(redis_url, store, assets, "--run-id", "waiting", "--queue", "other")
    assert done.returncode == 0, done.stderr
    cancelled = cli("cancel", "waiting", "--store", store, "--broker", redis_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stderr.endswith("waiting: revoked (it had not started)\n")
    assert [(r["state"], r["status"]) for r in _status(store, "waiting")] == [("REVOKED", "revoked")]
    workers = Workers(assets, redis_url, store, tmp_path, count=1, latency=0.25)
    try:
        done = _submit(redis_url, store, assets, "--run-id", "running", "--model", "model-x", "--batch-size", "1",
                       "--concurrency", "1")
        assert done.returncode == 0, done.stderr
        _wait_for(lambda: len(workers.servers[0].requests) >= 3, what="requests")
        queued = cli("queue", "--store", store, "--json")
        assert [(r["run_id"], r["state"], r["status"]) for r in json.loads(queued.stdout)["runs"]] == [
            ("running", "STARTED", None)]
        cancelled = cli("cancel", "running", "--store", store)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "running: running on " in cancelled.stderr
        runs = _wait(store, ["running"], seconds=60)
        assert [(r["state"], r["status"], r["exit_code"]) for r in runs] == [("REVOKED", "interrupted", 143)]
        summary = json.loads((workers.outputs[0] / "running" / "evalchemy_summary_running.json").read_text())
        assert summary["status"] == "interrupted"
    finally:
        workers.stop()


class _Cluster:
    """A PostgreSQL cluster of its own (as tests/test_store.py's), for a test that stops and restarts it."""

    def __init__(self, folder: Path):
        from tests.test_store import _pg_bin

        self.bin = _pg_bin()
        self.folder, self.data, self.port = folder, folder / "data", _free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(folder, "postgres")
        subprocess.run([*self.as_postgres, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                        "evalchemy", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True)
        self.url = f"postgresql://evalchemy@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                        str(self.folder / "log"), "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} "
                        f"-k {self.folder} -c fsync=off", "start"], check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                        "stop"], capture_output=True)


def test_store_down_at_the_end_of_a_run_keeps_the_summary_for_store_import(tmp_path_factory, redis_url, assets):
    from tests.test_store import _pg_bin

    if _pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    folder = Path(tempfile.mkdtemp(prefix="evalchemy-pg-queue-"))
    cluster = _Cluster(folder)
    cluster.start()
    tmp_path = tmp_path_factory.mktemp("store-down")
    workers = None
    try:
        workers = Workers(assets, redis_url, cluster.url, tmp_path, count=1, latency=0.25)
        done = _submit(redis_url, cluster.url, assets, "--run-id", "outage", "--model", "model-x", "--batch-size",
                       "1", "--concurrency", "1")
        assert done.returncode == 0, done.stderr
        _wait_for(lambda: len(workers.servers[0].requests) >= 3, what="requests")
        cluster.stop()
        summary_file = workers.outputs[0] / "outage" / "evalchemy_summary_outage.json"
        # written first, then rewritten with the store's failure once the store was tried
        _wait_for(lambda: summary_file.is_file() and "store" in json.loads(summary_file.read_text()), seconds=120,
                  what="the summary with the store's failure")
        summary = json.loads(summary_file.read_text())
        assert (summary["status"], summary["store"]["status"]) == ("success", "failed")
        down = cli("status", "--store", cluster.url)
        assert down.returncode == 2
        assert "cannot be reached" in down.stderr
        cluster.start()
        imported = cli("store", "import", str(workers.outputs[0]), "--store", cluster.url)
        assert imported.returncode == 0, imported.stderr
        assert _table(cluster.url, "SELECT run_id, status FROM runs") == [("outage", "success")]
        assert _table(cluster.url, "SELECT count(*) FROM samples") == [(20,)]
        # its end in the queue table: by the worker once the store is back within its retries, else by the import
        assert [(r["state"], r["status"], r["exit_code"]) for r in _status(cluster.url, "outage")] == [
            ("SUCCESS", "success", 0)]
    finally:
        if workers is not None:
            workers.stop()
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_two_endpoints_give_the_scores_of_one_and_both_are_used(tmp_path, assets):
    """Two benchmarks over two test servers of the same model: both serve requests, the scores are those of one."""
    config = tmp_path / "two.json"
    config.write_text(json.dumps({
        "benchmarks": {s: {"enabled": True, "description": s, "tasks": [f"flip_{s}"]} for s in ("insurance", "finance")},
        "tasks": {f"flip_{s}": {"enabled": True, "tasks": [f"demo_flip_{s}"]} for s in ("insurance", "finance")},
    }), encoding="utf-8")
    servers = [TestServer(assets["tokenizer"], "model-x", answers={"favoured": _favoured(RUN_A)}, latency=0.05).start()
               for _ in range(3)]
    try:
        def run(run_id, *endpoints):
            args = [a for srv in endpoints for a in ("--endpoint", srv.base_url + "/v1")]
            done = cli(*args, "--config", str(config), "--include-path", str(assets["tasks"]), "--output",
                       str(tmp_path / "results"), "--run-id", run_id, "--tokenizer", str(assets["tokenizer"]),
                       timeout=300)
            assert done.returncode == 0, done.stderr
            summary = json.loads(Path(done.stdout.strip()).read_text())
            return {name: (b["status"], json.dumps(b.get("metrics"), sort_keys=True))
                    for name, b in summary["benchmarks"].items()}

        one = run("one", servers[0])
        two = run("two", servers[1], servers[2])
        assert set(one) == {"insurance", "finance"}
        assert all(status == "success" and metrics not in ("null", "{}") for status, metrics in one.values()), one
        assert two == one
        assert [len(_lm_eval_requests(s)) > 0 for s in servers[1:]] == [True, True]
        assert sum(len(_lm_eval_requests(s)) for s in servers[1:]) == len(_lm_eval_requests(servers[0]))
    finally:
        for srv in servers:
            srv.stop()
