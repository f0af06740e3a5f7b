"""The results store: runs record themselves, `store import`, `compare` (McNemar, Holm, the regression gate),
`leaderboard` and `history`, on SQLite and on a real PostgreSQL server; schema migrations from the first revision.

Runs are real (lm-eval through ./run_evalchemy.sh against the test server). Each question of the two-subject
benchmark has four one-word choices and the server favours exactly one word per question, so which questions
each run gets right is set by the test: run B breaks K_BROKEN insurance questions and fixes one finance question
of run A; run C breaks only two.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator

from evalchemy.config.model import load_schema
from evalchemy.store import db, record, schema
from evalchemy.testing.server import TestServer, build_test_tokenizer
from tests.conftest import PROJECT

SUBJECTS = {"insurance": ("보험학", 12), "finance": ("금융", 8)}
K_BROKEN = 9  # run B: insurance questions right in A and wrong in B
K_NOISE = 2  # run C: the same, two questions only
STORE_PASSWORD = "pw-SECRET-5150"


def _choices(subject: str, i: int) -> list[str]:
    return [f"{subject}{i}opt{j}" for j in range(4)]


def _answer(i: int) -> int:
    return i % 4


def _favoured(broken: dict[str, set[int]]) -> list[str]:
    """Favour each question's right choice, or for the listed questions a wrong one."""
    words = []
    for subject, (_, count) in SUBJECTS.items():
        for i in range(count):
            pick = (_answer(i) + 1) % 4 if i in broken.get(subject, set()) else _answer(i)
            words.append(_choices(subject, i)[pick])
    return sorted(words)


RUN_A = {"finance": {0}}  # A gets finance question 0 wrong
RUN_B = {"insurance": set(range(K_BROKEN))}  # B breaks K_BROKEN insurance questions and fixes finance 0
RUN_C = {"insurance": set(range(K_NOISE)), "finance": {0}}


def _config() -> dict:
    return {
        "benchmarks": {"domain": {"enabled": True, "description": "two subjects",
                                  "tasks": ["flip_insurance", "flip_finance"]}},
        "tasks": {f"flip_{s}": {"enabled": True, "tasks": [f"demo_flip_{s}"], "label": label}
                  for s, (label, _) in SUBJECTS.items()},
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("store-assets"))


def write_assets(folder: Path) -> dict:
    """The two-subject task, its data, its config and a tokenizer covering them, under ``folder``."""
    texts = ["Question :", "Answer :"]
    for subject, (label, count) in SUBJECTS.items():
        rows = [{"question": f"{label} question {i}", "choices": _choices(subject, i), "answer": _answer(i)}
                for i in range(count)]
        texts += [r["question"] for r in rows] + [w for r in rows for w in r["choices"]]
        data = folder / "data" / f"{subject}.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tasks = folder / "tasks"
        tasks.mkdir(exist_ok=True)
        (tasks / f"flip_{subject}.yaml").write_text(
            f"task: demo_flip_{subject}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "output_type: multiple_choice\ntest_split: test\n"
            'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
            "doc_to_target: answer\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
            "    higher_is_better: true\nmetadata:\n  version: 1\n", encoding="utf-8")
    config = folder / "eval_config.json"
    config.write_text(json.dumps(_config(), ensure_ascii=False), encoding="utf-8")
    return {"tokenizer": build_test_tokenizer(folder / "tokenizer", texts), "tasks": folder / "tasks",
            "config": config}


def run_cli(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def _run(assets, out: Path, run_id: str, model: str, broken: dict, *extra: str):
    with TestServer(assets["tokenizer"], model, answers={"favoured": _favoured(broken)}) as srv:
        return run_cli("--endpoint", srv.base_url + "/v1", "--config", str(assets["config"]), "--output", str(out),
                       "--run-id", run_id, "--include-path", str(assets["tasks"]), *extra)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
    """Runs A, B, C and a failed one (preflight) in one output folder. B's store is unreachable, so its
    record is missing until `store import`."""
    out = tmp_path_factory.mktemp("store-runs") / "results"
    done = {"out": out}
    done["a"] = _run(assets, out, "night-a", "model-x", RUN_A)
    closed = f"postgresql://evalchemy:{STORE_PASSWORD}@127.0.0.1:{_free_port()}/nowhere"
    done["b"] = _run(assets, out, "night-b", "model-x", RUN_B, "--store", closed)
    done["c"] = _run(assets, out, "night-c", "model-y", RUN_C)
    done["failed"] = run_cli("--endpoint", f"http://127.0.0.1:{_free_port()}/v1", "--config", str(assets["config"]),
                             "--output", str(out), "--run-id", "night-failed", "--model", "model-x",
                             "--include-path", str(assets["tasks"]))
    done["closed_url"] = closed
    return done


# -- a real PostgreSQL server -------------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (initdb + pg_ctl in a temporary folder), stopped at the end."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (scripts/test.sh installs Debian's postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="evalchemy-pg-"))
    data = folder / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    port = _free_port()
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "evalchemy",
                    "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://evalchemy@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


_databases = iter(range(1, 10_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty store: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    server = request.getfixturevalue("postgres")
    name = f"store_{next(_databases)}"
    engine = sa.create_engine(db.resolve_url(server + "/postgres", tmp_path), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"


def cli(*args, env=None):
    return run_cli(*args, env=env)


def _import(runs, url):
    done = cli("store", "import", str(runs["out"]), "--store", url)
    assert done.returncode == 0, done.stderr
    return done


# -- the runs record themselves -------------------------------------------------------------------------------------


def test_runs_exit_as_before_and_write_score_files(runs):
    """Each run keeps its own exit code (B's store was unreachable) and writes one score file per task."""
    assert (runs["a"].returncode, runs["b"].returncode, runs["c"].returncode) == (0, 0, 0), runs["b"].stderr
    assert runs["failed"].returncode == 3
    rows = [json.loads(line) for line in
            (runs["out"] / "night-a" / "scores" / "domain" / "demo_flip_insurance.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert sorted(rows[0]) == ["doc_hash", "doc_id", "metrics", "prediction", "prompt_hash", "target"]
    assert [(r["doc_id"], r["metrics"], r["target"], r["prediction"]) for r in rows[:2]] == [
        (0, {"acc": 1.0}, "0", "0"), (1, {"acc": 1.0}, "1", "1")]
    assert not list((runs["out"] / "night-a").rglob("samples_*.jsonl"))  # lm-eval's own: only with log_samples


def test_unreachable_store_is_a_warning_in_the_summary_and_errors_log(runs):
    """B ran to success; its summary and errors log say the store failed and how to record it later."""
    run_dir = runs["out"] / "night-b"
    summary = json.loads((run_dir / "evalchemy_summary_night-b.json").read_text(encoding="utf-8"))
    Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
    assert summary["status"] == "success" and summary["exit_code"] == 0
    assert summary["store"]["status"] == "failed"
    port = runs["closed_url"].split(":")[-1].split("/")[0]
    assert summary["store"]["reason"].startswith(f"store postgresql+psycopg://***@127.0.0.1:{port}/nowhere "
                                                 "cannot be reached: ")
    errors = (run_dir / "evalchemy_errors_night-b.log").read_text(encoding="utf-8")
    assert f"record it later with `evalchemy store import {run_dir}`" in errors
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        assert STORE_PASSWORD.encode() not in path.read_bytes(), path
    assert STORE_PASSWORD not in runs["b"].stdout + runs["b"].stderr
    with sa.create_engine(f"sqlite:///{runs['out'] / 'evalchemy.db'}").connect() as connection:
        recorded = sorted(connection.execute(sa.select(schema.runs.c.run_id, schema.runs.c.status)).all())
    assert recorded == [("night-a", "success"), ("night-c", "success"), ("night-failed", "failed")]


# -- store import, on SQLite and PostgreSQL ------------------------------------------------------------------------


def _counts(url: str) -> dict:
    engine = db.open_engine(db.resolve_url(url, Path(".")))
    with engine.connect() as connection:
        counts = {t.name: connection.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                  for t in (schema.runs, *schema.CHILD_TABLES)}
    engine.dispose()
    return counts


def test_import_is_idempotent(runs, store_url):
    """Importing the output folder twice records four runs once: 3 scored runs x 2 subjects x 20 questions."""
    first = _import(runs, store_url)
    assert sorted(first.stdout.split()) == ["night-a", "night-b", "night-c", "night-failed"]
    expected = {"runs": 4, "benchmarks": 4, "scores": 6, "subjects": 6, "samples": 60}
    assert _counts(store_url) == expected
    _import(runs, store_url)
    assert _counts(store_url) == expected


def _mcnemar(fixed: int, broken: int) -> float:
    n, k = fixed + broken, min(fixed, broken)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def _holm(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def test_compare_finds_the_flipped_questions_and_gates(runs, store_url, tmp_path):
    """A -> B: McNemar on 9 broken insurance questions and 1 fixed finance question, Holm over the three rows;
    exit 6 when the gate is below the drop, 0 above it."""
    _import(runs, store_url)
    done = cli("compare", "night-a", "night-b", "--json", "--store", store_url, "--show-flips", "3")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["a"], result["b"]) == ("night-a", "night-b")
    p = [_mcnemar(1, K_BROKEN), _mcnemar(1, 0), _mcnemar(0, K_BROKEN)]  # domain, 금융, 보험학
    adjusted = _holm(p)
    rows = [{k: r[k] for k in ("benchmark", "subject", "metric", "n", "method", "fixed", "broken",
                               "beyond_noise", "regression")} for r in result["rows"]]
    assert rows == [
        {"benchmark": "domain", "subject": None, "metric": "acc", "n": 20, "method": "mcnemar", "fixed": 1,
         "broken": K_BROKEN, "beyond_noise": adjusted[0] < 0.05, "regression": True},
        {"benchmark": "domain", "subject": "금융", "metric": "acc", "n": 8, "method": "mcnemar", "fixed": 1,
         "broken": 0, "beyond_noise": False, "regression": False},
        {"benchmark": "domain", "subject": "보험학", "metric": "acc", "n": 12, "method": "mcnemar", "fixed": 0,
         "broken": K_BROKEN, "beyond_noise": True, "regression": True},
    ]
    assert [r["p_value"] for r in result["rows"]] == pytest.approx(p, rel=1e-12)
    assert [r["p_adjusted"] for r in result["rows"]] == pytest.approx(adjusted, rel=1e-12)
    assert [(r["a"], r["b"]) for r in result["rows"]] == pytest.approx(
        [(19 / 20, 11 / 20), (7 / 8, 1.0), (1.0, 3 / 12)])
    assert result["rows"][2]["delta"] == pytest.approx(-0.75)
    assert result["flips_total"] == K_BROKEN + 1
    assert [(f["subject"], f["doc_id"], f["change"], f["target"], f["prediction_a"], f["prediction_b"])
            for f in result["flips"]] == [("보험학", "0", "broken", "0", "0", "1"),
                                          ("보험학", "1", "broken", "1", "1", "2"),
                                          ("보험학", "2", "broken", "2", "2", "3")]
    # 보험학 dropped 75 points, the benchmark 40: a gate at 50 points trips on the subject, one at 80 does not
    gated = cli("compare", "night-a", "night-b", "--store", store_url, "--fail-on-regression", "50")
    assert gated.returncode == 6, gated.stderr
    assert gated.stderr.splitlines() == [
        f"regression: domain / 보험학 acc 1.0000 -> 0.2500 (-75.00 points, p={adjusted[2]:.4g} after Holm): "
        "worse by more than 50 points"]
    assert cli("compare", "night-a", "night-b", "--store", store_url, "--fail-on-regression", "80").returncode == 0
    page = tmp_path / "compare.html"
    assert cli("compare", "night-a", "night-b", "--store", store_url, "--html", str(page)).returncode == 0
    html = page.read_text(encoding="utf-8")
    assert "보험학" in html and "night-a" in html and "night-b" in html and "<svg" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


def test_compare_within_noise_does_not_gate(runs, store_url):
    """A -> C: two broken questions are not beyond noise (p = 0.5), so even a zero-point gate passes."""
    _import(runs, store_url)
    done = cli("compare", f"{store_url}#night-a", "night-c", "--store", store_url, "--json",
               "--fail-on-regression", "0")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)["rows"][2]
    assert (row["subject"], row["fixed"], row["broken"], row["p_value"], row["beyond_noise"], row["regression"]) == (
        "보험학", 0, K_NOISE, _mcnemar(0, K_NOISE), False, False)


def test_leaderboard_and_history(runs, store_url, tmp_path):
    """Per subject: model-y (run C) leads on 보험학; model-x's latest successful run is B. History shows the failed
    run as failed, without a score."""
    _import(runs, store_url)
    done = cli("leaderboard", "--subject", "보험학", "--json", "--store", store_url)
    assert done.returncode == 0, done.stderr
    page = tmp_path / "leaderboard.html"
    assert cli("leaderboard", "--by", "subject", "--store", store_url, "--html", str(page)).returncode == 0
    html = page.read_text(encoding="utf-8")
    assert "model-x" in html and "model-y" in html and "보험학" in html
    rows = json.loads(done.stdout)["rows"]
    assert [(r["model"], r["benchmark"], r["subject"], r["metric"], r["value"], r["n"], r["run_id"])
            for r in rows] == [("model-y", "domain", "보험학", "acc", 10 / 12, 12, "night-c"),
                               ("model-x", "domain", "보험학", "acc", 3 / 12, 12, "night-b")]
    assert sorted(rows[0]) == ["benchmark", "finished_at", "metric", "model", "n", "run_id", "stderr", "subject",
                               "value"]
    csv_out = cli("leaderboard", "--csv", "--store", store_url).stdout.splitlines()
    assert csv_out[0] == "model,benchmark,subject,metric,value,stderr,n,run_id,finished_at"
    assert [line.split(",")[:3] + [line.split(",")[7]] for line in csv_out[1:]] == [
        ["model-y", "domain", "", "night-c"], ["model-x", "domain", "", "night-b"]]
    assert json.loads(cli("leaderboard", "--since", "2999-01-01", "--json", "--store", store_url).stdout) == \
        {"rows": []}
    every = json.loads(cli("leaderboard", "--all-runs", "--json", "--store", store_url).stdout)["rows"]
    assert [(r["run_id"], r["value"]) for r in every] == [("night-a", 19 / 20), ("night-c", 17 / 20),
                                                           ("night-b", 11 / 20)]
    history = json.loads(cli("history", "--model", "model-x", "--json", "--store", store_url).stdout)
    assert sorted((r["run_id"], r["status"], r["benchmark_status"], r["value"]) for r in history["rows"]) == [
        ("night-a", "success", "success", 19 / 20), ("night-b", "success", "success", 11 / 20),
        ("night-failed", "failed", "skipped", None)]


def test_read_commands_refuse_a_missing_store_and_unknown_runs(tmp_path, runs):
    """Read-only: no store file is created; an unknown run id names how to find one."""
    missing = tmp_path / "none.db"
    done = cli("leaderboard", "--store", str(missing))
    assert done.returncode == 2
    assert done.stderr == (f"error: no store at {missing}: a run writes it at its end, or record earlier runs with "
                           "`evalchemy store import RESULTS_DIR`\n")
    assert not missing.exists()
    done = cli("compare", "night-a", "nope", "--output", str(runs["out"]))
    assert done.returncode == 2
    assert done.stderr == (f"error: run 'nope' is not in the store sqlite:///{runs['out'] / 'evalchemy.db'}: "
                           "`evalchemy history --model M` lists run ids; `evalchemy store import DIR` records a run "
                           "folder\n")


def test_different_measurements_are_marked_not_compared(runs, tmp_path):
    """A run with another num_fewshot is a different measurement: rows marked, never tested, never a regression."""
    url = str(tmp_path / "store.db")
    _import(runs, url)
    engine = db.open_engine(db.resolve_url(url, tmp_path))
    with engine.begin() as connection:
        connection.execute(sa.update(schema.scores).where(schema.scores.c.run_id == "night-b")
                           .values(num_fewshot=5))
    engine.dispose()
    result = json.loads(cli("compare", "night-a", "night-b", "--json", "--store", url,
                            "--fail-on-regression", "0").stdout)
    assert {(r["comparable"], r["method"], r["p_value"], r["regression"]) for r in result["rows"]} == {
        (False, None, None, False)}
    assert result["rows"][0]["note"] == ("not the same measurement: demo_flip_finance: num_fewshot 0 != 5; "
                                         "demo_flip_insurance: num_fewshot 0 != 5")


# -- migrations -------------------------------------------------------------------------------------------------------


def test_upgrade_from_the_first_revision_keeps_every_row(runs, store_url, tmp_path):
    """A store created at revision 0001 and filled is upgraded to the head revision with every row kept."""
    url = db.resolve_url(store_url, tmp_path)
    engine = db.open_engine(url)
    db.upgrade(engine, "0001")
    for summary in sorted(runs["out"].glob("*/evalchemy_summary_*.json")):
        record.write_rows(engine, record.build_rows(summary.parent, json.loads(summary.read_text("utf-8"))))
    before = _counts(store_url)
    with engine.connect() as connection:
        assert db.current_revision(connection) == "0001"
        rows_before = connection.execute(sa.select(schema.samples).order_by(*schema.samples.primary_key)).all()
    db.upgrade(engine)
    with engine.connect() as connection:
        assert db.current_revision(connection) == db.HEAD
        assert connection.execute(sa.select(schema.samples).order_by(*schema.samples.primary_key)).all() == \
            rows_before
        indexes = {i["name"] for i in sa.inspect(connection).get_indexes("runs")}
    engine.dispose()
    assert _counts(store_url) == before == {"runs": 4, "benchmarks": 4, "scores": 6, "subjects": 6, "samples": 60}
    assert {"ix_runs_model_finished", "ix_runs_finished"} <= indexes


def test_readers_work_while_a_run_writes(runs, tmp_path):
    """SQLite in WAL mode: while a writer holds an open transaction, `leaderboard` reads the committed rows."""
    url = str(tmp_path / "store.db")
    _import(runs, url)
    engine = db.open_engine(db.resolve_url(url, tmp_path))
    with engine.begin() as connection:
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        connection.execute(sa.update(schema.benchmarks).values(value=0.0))  # not committed yet
        done = cli("leaderboard", "--json", "--store", url)
        assert done.returncode == 0, done.stderr
        assert [r["value"] for r in json.loads(done.stdout)["rows"]] == [17 / 20, 11 / 20]
        connection.rollback()
    engine.dispose()


def test_store_commands_document_every_flag_and_answer_on_both_entry_points():
    """Each store command and option has help text; `.venv/bin/evalchemy compare --help` works as well as
    ./run_evalchemy.sh, and the run command's flags are untouched by the subcommands."""
    import click

    from evalchemy.cli import store_commands

    commands = [store_commands.compare, store_commands.leaderboard, store_commands.history,
                store_commands.import_, store_commands.upgrade]
    for command in commands:
        assert command.help, command.name
        assert [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help] == []
    import re

    # what pip's .venv/bin/evalchemy runs: the [project.scripts] target
    target = re.search(r'^evalchemy = "([\w.]+):(\w+)"$', (PROJECT / "pyproject.toml").read_text(), re.M)
    module, function = target.groups()
    done = subprocess.run([sys.executable, "-c", f"from {module} import {function}; {function}()", "compare",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: run_evalchemy.sh compare [OPTIONS] RUN_A RUN_B")
    assert "--fail-on-regression POINTS" in done.stdout
    assert cli("--endpoint", "ftp://x", "--run-id", "r").returncode == 2  # still the run command


def test_scrub_removes_credentials_from_configs():
    """A config stored with a run loses every key that looks like a credential, at any depth."""
    assert record.scrub({"api_key": "k", "tasks": {"a": {"headers": {"x": 1}, "label": "보험학"}},
                         "list": [{"password": "p", "hf_token": "t", "tokenizer": "tok"}]}) == {
        "api_key": "(removed)", "tasks": {"a": {"headers": "(removed)", "label": "보험학"}},
        "list": [{"password": "(removed)", "hf_token": "(removed)", "tokenizer": "tok"}]}


def test_without_per_question_scores_the_test_is_unpaired_and_respects_lower_is_better(runs, tmp_path):
    """Run B's questions removed: a z test from the stderrs (lm-eval's sqrt(p(1-p)/(n-1))), computed here; with
    higher_is_better false the 보험학 drop is an improvement, not a regression."""
    url = str(tmp_path / "store.db")
    _import(runs, url)
    engine = db.open_engine(db.resolve_url(url, tmp_path))
    with engine.begin() as connection:
        connection.execute(sa.delete(schema.samples).where(schema.samples.c.run_id == "night-b"))
    result = json.loads(cli("compare", "night-a", "night-b", "--json", "--store", url).stdout)
    row = result["rows"][2]
    spread = math.sqrt(0.0 + 0.25 * 0.75 / 11)  # A: 12/12 right (stderr 0); B: 3/12
    assert (row["subject"], row["method"], row["fixed"], row["broken"]) == ("보험학", "unpaired", None, None)
    assert row["p_value"] == pytest.approx(math.erfc(0.75 / spread / math.sqrt(2)), rel=1e-9)
    assert (row["beyond_noise"], row["regression"]) == (True, True)
    with engine.begin() as connection:
        connection.execute(sa.update(schema.scores).values(higher_is_better=False))
    engine.dispose()
    done = cli("compare", "night-a", "night-b", "--json", "--store", url, "--fail-on-regression", "0")
    assert done.returncode == 0
    row = json.loads(done.stdout)["rows"][2]
    assert (row["higher_is_better"], row["beyond_noise"], row["regression"]) == (False, True, False)


def test_json_safe_turns_nan_into_null():
    """PostgreSQL's JSON refuses NaN: summaries and per-question metrics are stored with null instead."""
    assert record.json_safe({"a": [float("nan"), 1.0, float("inf")], "b": {"c": 2}}) == {"a": [None, 1.0, None],
                                                                                       "b": {"c": 2}}


def test_a_run_records_itself_in_the_postgresql_store_named_by_the_environment(assets, postgres, tmp_path):
    """EVALCHEMY_STORE=postgresql://…: the run writes its record there (runs, scores, every question), not to
    results/evalchemy.db: several machines can share one history."""
    name = "shared_history"
    engine = sa.create_engine(db.resolve_url(postgres + "/postgres", tmp_path), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    url = f"{postgres}/{name}"
    with TestServer(assets["tokenizer"], "model-pg", answers={"favoured": _favoured({})}) as srv:
        done = run_cli("--endpoint", srv.base_url + "/v1", "--config", str(assets["config"]), "--output",
                       str(tmp_path / "out"), "--run-id", "box-1", "--include-path", str(assets["tasks"]),
                       env={"EVALCHEMY_STORE": url})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out" / "evalchemy.db").exists()
    assert _counts(url) == {"runs": 1, "benchmarks": 1, "scores": 2, "subjects": 2, "samples": 20}
    board = json.loads(cli("leaderboard", "--by", "subject", "--json", env={"EVALCHEMY_STORE": url}).stdout)
    assert [(r["model"], r["subject"], r["value"], r["run_id"]) for r in board["rows"]] == [
        ("model-pg", "금융", 1.0, "box-1"), ("model-pg", "보험학", 1.0, "box-1")]


def test_a_store_url_nothing_can_open_is_refused_before_the_run(invoke, assets, tmp_path):
    """--store with an unknown database kind is a usage error (exit 2) before anything runs; its password is
    not echoed."""
    result = invoke("--endpoint", "http://127.0.0.1:9/v1", "--store", "mysql2://u:pw-SECRET@h/db", "--output",
                    str(tmp_path / "o"), "--run-id", "r", "--config", str(assets["config"]), "--include-path",
                    str(assets["tasks"]))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] + "\n" == ("error: --store mysql2://***@h/db: not a store URL this evalchemy can open (Can't load "
                             "plugin: sqlalchemy.dialects:mysql2); use a file path, sqlite:///FILE or "
                             "postgresql://USER@HOST:PORT/DB\n")
    assert "pw-SECRET" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_plain_store_urls_are_checked_without_loading_sqlalchemy(tmp_path):
    """SQLite and PostgreSQL URLs are checked with the standard library (the run's supervising process holds no
    SQLAlchemy until it records the run); a port that is not a number still fails the check, with SQLAlchemy's
    words, and its password hidden."""
    code = ("import sys; from pathlib import Path; from evalchemy.store.url import resolve_url; "
            "print(resolve_url('postgres://u:pw@db-host:5432/evalchemy', Path('.'))); "
            "print(resolve_url('sqlite:////data/runs.db', Path('.'))); "
            "print(resolve_url(None, Path('/data/results'))); "
            "print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT)
    assert out.stdout.splitlines() == ["postgresql+psycopg://u:pw@db-host:5432/evalchemy", "sqlite:////data/runs.db",
                                       "sqlite:////data/results/evalchemy.db", "False"]
    from evalchemy.errors import StoreError
    from evalchemy.store.url import resolve_url

    with pytest.raises(StoreError) as caught:
        resolve_url("postgresql://u:pw-SECRET@h:54x2/db", tmp_path)
    assert str(caught.value) == ("store postgresql+psycopg://***@h:54x2/db: not a store URL this evalchemy can "
                                 "open (invalid literal for int() with base 10: '54x2'); use a file path, "
                                 "sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
