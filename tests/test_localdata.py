"""Local datasets in the KMMLU format: every supported layout, run through the runner against the test server,
and every way the data can be wrong stopping the run before any request with a message that says what to do."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from evalchemy.datasets import local as localdata
from evalchemy.config.model import load_schema
from evalchemy.testing.server import TestServer, build_test_tokenizer, prompt_count
from evalchemy.backends.echo_check import CHECK_REQUESTS, PROBE_TEXT
from tests import taskdata
from tests.conftest import PROJECT

LABELS = {subject: label for subject, (label, _) in taskdata.DOMAINS.items()}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    return build_test_tokenizer(folder / "tokenizer", taskdata.vocabulary() + taskdata.domain_vocabulary())


@pytest.fixture(scope="module")
def server(tokenizer):
    with TestServer(tokenizer, "test-model", answers={"favoured": ["A", "C"]}) as srv:
        yield srv


def prompts_sent(server, since: int = 0) -> int:
    """Prompts in the completions requests a run that began at request ``since`` sent after the preflight's echo
    check (a request may carry several)."""
    assert all(r["prompt"] == server.encode(PROBE_TEXT) for r in server.requests[since:since + CHECK_REQUESTS])
    return sum(prompt_count(r) for r in server.requests[since + CHECK_REQUESTS:])


def requests_for(*questions: int, batch: int = 8) -> int:
    """HTTP requests lm-eval makes for entries of these sizes: 4 choices each, ``batch`` prompts per request."""
    return sum(-(-4 * n // batch) for n in questions)


def expected_breakdown(benchmark: str) -> dict:
    """The four domains' breakdown, computed from the test data: per label, and size-weighted overall."""
    expected = {LABELS[s]: taskdata.expected_accuracy(s) for s in taskdata.DOMAINS}
    sizes = {LABELS[s]: len(taskdata.DOMAINS[s][1]) for s in taskdata.DOMAINS}
    overall = sum(expected[k] * sizes[k] for k in expected) / sum(sizes.values())
    return {f"{benchmark}_accuracy": pytest.approx(overall), f"{benchmark}_subject_accuracy": pytest.approx(expected)}


def run_on(server, config: Path, data: Path, out: Path, run_id: str) -> tuple[dict, int]:
    """A run of ``config`` on the data folder ``data``: (its summary, the prompts the server received)."""
    before = len(server.requests)
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(out), "--run-id", run_id,
                   "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / run_id / f"evalchemy_summary_{run_id}.json").read_text(encoding="utf-8"))
    Draft202012Validator(load_schema("summary.schema.json")).validate(summary)
    return summary, prompts_sent(server, before)


DOMAIN_SIZES = [len(answers) for _, answers in taskdata.DOMAINS.values()]


def run_cli(*args, env=None, timeout=240):
    return subprocess.run([str(PROJECT / "run_evalchemy.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def entry(path: str, label: str, **extra) -> dict:
    dataset = {"path": path, **{k: v for k, v in extra.items() if k in ("subset", "answers", "source")}}
    return {"enabled": True, "label": label, "dataset": dataset,
            **{k: v for k, v in extra.items() if k not in dataset}}


def ready_made_store(data: Path) -> None:
    """The four domains as a user would have them: insurance saved with save_to_disk (dev/test), finance as JSONL
    with a validation split, accounting and economics in a local mirror of the KMMLU repo."""
    taskdata.write_save_to_disk(data / "kmmlu" / "insurance", {"dev": taskdata.kmmlu_rows("insurance", "dev"),
                                                               "test": taskdata.kmmlu_rows("insurance")})
    taskdata.write_rows(data / "kmmlu" / "finance" / "test.jsonl", taskdata.kmmlu_rows("finance"))
    taskdata.write_rows(data / "kmmlu" / "finance" / "validation.jsonl", taskdata.kmmlu_rows("finance", "dev"))
    taskdata.write_hub_mirror(data / "hub" / "KMMLU", {"Accounting": "accounting", "Economics": "economics"})


def ready_made_config() -> dict:
    return {
        "benchmarks": {"kmmlu": {"enabled": True, "description": "KMMLU-format domains",
                                 "tasks": ["kmmlu_insurance", "kmmlu_finance", "kmmlu_accounting",
                                           "kmmlu_economics"]}},
        "tasks": {
            "kmmlu_insurance": entry("kmmlu/insurance", "보험학", num_fewshot=2, log_samples=True),
            "kmmlu_finance": entry("kmmlu/finance", "금융", num_fewshot=1),
            "kmmlu_accounting": entry("hub/KMMLU", "회계", subset="Accounting",
                                      source={"repo": "HAERAE-HUB/KMMLU", "subset": "Accounting"}),
            "kmmlu_economics": entry("hub/KMMLU", "경제학", subset="Economics"),
        },
    }


def test_ready_made_domains_give_korean_breakdown(server, write_config, tmp_path):
    """save_to_disk (dev/test, Korean), JSONL with validation, and a hub mirror: per-subject scores keyed by the
    Korean labels equal the share of questions whose answer is A (what the server's model picks)."""
    data = tmp_path / "store"
    ready_made_store(data)
    config = write_config(ready_made_config())
    summary, prompts = run_on(server, config, data, tmp_path / "o", "ko")
    assert summary["breakdown"]["benchmark"] == expected_breakdown("kmmlu")
    runs = {r["entry"]: r for r in summary["benchmarks"]["kmmlu"]["runs"]}
    assert runs["kmmlu_accounting"]["data"] == {"path": str(data / "hub" / "KMMLU"), "subset": "Accounting",
                                                "answers": "1-4"}
    assert prompts == 4 * sum(DOMAIN_SIZES)
    assert summary["benchmarks"]["kmmlu"]["requests"]["sent"] == requests_for(*DOMAIN_SIZES)
    # few-shot examples come from the dev split (save_to_disk "dev"), in order, never from the test split
    samples = list((tmp_path / "o" / "ko").rglob("samples_kmmlu_insurance_*.jsonl"))
    assert len(samples) == 1
    first = json.loads(samples[0].read_text(encoding="utf-8").splitlines()[0])
    context = first["arguments"]["gen_args_0"]["arg_0"]
    dev = taskdata.kmmlu_rows("insurance", "dev")
    assert context.startswith(dev[0]["question"] + "\nA. ")
    assert dev[1]["question"] in context and dev[2]["question"] not in context
    assert "보험학 test 문제 1 " in context
    log = (tmp_path / "o" / "ko" / "evalchemy_ko.log").read_text(encoding="utf-8")
    assert f"task kmmlu_insurance: save_to_disk data at {data / 'kmmlu' / 'insurance'} (dev 5 rows, test 5 rows)" in log
    assert f"task kmmlu_finance: files data at {data / 'kmmlu' / 'finance'} (dev 5 rows, test 4 rows)" in log


FORMATS = {
    "jsonl file": ("one.jsonl", "1-4"),
    "json array, letters": ("one.json", "A-D"),
    "csv counted from 0": ("one.csv", "0-3"),
    "parquet shards": ("shards", "1-4"),
    "arrow stream": ("one.arrow", "1-4"),
    "save_to_disk Dataset": ("saved_dataset", "1-4"),
}


def _write_format(data: Path, name: str) -> tuple[str, str]:
    path, answers = FORMATS[name]
    rows = taskdata.kmmlu_rows("economics")
    if answers == "A-D":
        rows = [{**r, "answer": "ABCD"[r["answer"] - 1]} for r in rows]
    elif answers == "0-3":
        rows = [{**r, "answer": r["answer"] - 1} for r in rows]
    if path == "shards":
        taskdata.write_rows(data / path / "test-00000-of-00002.parquet", rows[:3])
        taskdata.write_rows(data / path / "test-00001-of-00002.parquet", rows[3:])
        taskdata.write_rows(data / path / "dev-00000-of-00001.parquet", taskdata.kmmlu_rows("economics", "dev"))
    elif path == "saved_dataset":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(data / path))
    else:
        taskdata.write_rows(data / path, rows)
    return path, answers


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_scores_correctly(name, server, write_config, tmp_path):
    """Every supported layout and answer convention gives the same, independently computed score."""
    data = tmp_path / "store"
    path, answers = _write_format(data, name)
    config = write_config({"benchmarks": {"econ": {"enabled": True, "tasks": ["econ"]}},
                           "tasks": {"econ": entry(path, "경제학", answers=answers)}})
    before = len(server.requests)
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "f", env={"EVALCHEMY_DATA_DIR": str(data)})
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "f" / "evalchemy_summary_f.json").read_text(encoding="utf-8"))
    # one subject: no per-subject block (it would repeat the benchmark's accuracy)
    assert summary["breakdown"]["benchmark"] == {"econ_accuracy": pytest.approx(taskdata.expected_accuracy("economics"))}
    assert prompts_sent(server, before) == 4 * len(taskdata.DOMAINS["economics"][1])


# --- export and import --------------------------------------------------------------------------------------------

def script(name: str, *args, cwd=None, env=None):
    return subprocess.run([str(PROJECT / "scripts" / name), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=240)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def exported(write_config, tmp_path):
    """An archive exported from a connected machine's data folder; the closed machine's data folder is empty."""
    connected = tmp_path / "connected"
    ready_made_store(connected)
    config = write_config(ready_made_config())
    archive = tmp_path / "carry" / "kmmlu.tar.gz"
    done = script("export_data.sh", "--config", str(config), "--data-dir", str(connected), "--output", str(archive))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{archive}\n"
    return {"archive": archive, "config": config, "connected": connected, "closed": tmp_path / "closed" / "data"}


def test_export_writes_a_manifest_with_rows_and_checksums(exported):
    """The manifest names every dataset (task, path, kind, rows per split) and every file with its sha256; the
    mirror carries only the files of the subsets the config uses."""
    import hashlib
    import tarfile

    with tarfile.open(exported["archive"]) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert names[0] == "manifest.json"
    assert manifest["format"] == "evalchemy-data-archive" and manifest["version"] == 1
    assert [(d["task"], d["path"], d.get("subset"), d["kind"], d["splits"]) for d in manifest["datasets"]] == [
        ("kmmlu_insurance", "kmmlu/insurance", None, "save_to_disk", {"dev": 5, "test": 5}),
        ("kmmlu_finance", "kmmlu/finance", None, "files", {"dev": 5, "test": 4}),
        ("kmmlu_accounting", "hub/KMMLU", "Accounting", "hub-mirror", {"dev": 5, "test": 4}),
        ("kmmlu_economics", "hub/KMMLU", "Economics", "hub-mirror", {"dev": 5, "test": 6}),
    ]
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == set(tree(exported["connected"]))  # every file of the store, nothing else
    for rel, item in files.items():
        body = contents["data/" + rel]
        assert item["bytes"] == len(body)
        assert item["sha256"] == hashlib.sha256(body).hexdigest()


def test_round_trip_then_offline_run_gives_the_korean_breakdown(exported, server, tmp_path):
    """Import on the 'closed machine' reproduces the data folder byte for byte; a run there scores as on the
    connected machine; importing the same archive again changes nothing."""
    closed = exported["closed"]
    done = script("import_data.sh", str(exported["archive"]), "--data-dir", str(closed))
    assert done.returncode == 0, done.stderr
    assert f"imported {closed / 'kmmlu' / 'insurance'} for task kmmlu_insurance (save_to_disk: dev 5, test 5 rows)" \
        in done.stderr
    assert tree(closed) == tree(exported["connected"])
    assert [p.name for p in closed.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    summary, _ = run_on(server, exported["config"], closed, tmp_path / "o", "closed")
    assert summary["breakdown"]["benchmark"] == expected_breakdown("kmmlu")
    again = script("import_data.sh", str(exported["archive"]), "--data-dir", str(closed))
    assert again.returncode == 0, again.stderr
    assert f"unchanged {closed / 'hub' / 'KMMLU'} for task kmmlu_economics" in again.stderr
    assert "0 files written" in again.stderr


def _rewrite(archive: Path, out: Path, change) -> Path:
    """Copy a tar.gz member by member, letting ``change(name, body)`` return new bytes or None to drop it."""
    import io
    import tarfile

    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            body = src.extractfile(member).read() if member.isfile() else None
            new = change(member.name, body)
            if new is None:
                continue
            member.size = len(new)
            dst.addfile(member, io.BytesIO(new))
    return out


def test_damaged_archives_are_refused_and_the_data_folder_is_unchanged(exported, tmp_path):
    """Tampered, partial, truncated, foreign and path-escaping archives: exit 3, a message naming the problem, and
    the data folder exactly as before (here: one dataset already imported)."""
    import io
    import tarfile

    closed = exported["closed"]
    taskdata.write_rows(closed / "kmmlu" / "old" / "test.jsonl", taskdata.kmmlu_rows("finance"))
    before = tree(closed)
    archive = exported["archive"]
    arrow = "data/kmmlu/insurance/test/data-00000-of-00001.arrow"
    cases = {
        "tampered": (_rewrite(archive, tmp_path / "t.tar.gz",
                              lambda n, b: b.replace("보험학".encode(), "금융학".encode()) if n == arrow else b),
                     f"{archive.parent.parent / 't.tar.gz'}: {arrow} does not match the manifest (sha256 differs): the "
                     "archive was changed or damaged after export; nothing was imported and the data folder is "
                     "unchanged"),
        "partial": (_rewrite(archive, tmp_path / "p.tar.gz", lambda n, b: None if n == arrow else b),
                    "1 file of the manifest missing from the archive (first: kmmlu/insurance/test/"
                    "data-00000-of-00001.arrow): the archive is incomplete, copy it again"),
        "extra": (_rewrite(archive, tmp_path / "e.tar.gz", lambda n, b: b), None),
        "truncated": (tmp_path / "cut.tar.gz", "the archive is truncated or damaged"),
        "not an archive": (tmp_path / "junk.tar.gz", "not a readable .tar.gz archive"),
        "no manifest": (_rewrite(archive, tmp_path / "m.tar.gz", lambda n, b: None if n == "manifest.json" else b),
                        "no manifest.json: it was not made by scripts/export_data.sh"),
    }
    data = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "junk.tar.gz").write_bytes(b"these are not the bytes you are looking for\n" * 20)
    with tarfile.open(archive) as src, tarfile.open(tmp_path / "e.tar.gz", "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        extra = tarfile.TarInfo("data/kmmlu/insurance/planted.jsonl")
        extra.size = 3
        dst.addfile(extra, io.BytesIO(b"{}\n"))
    cases["extra"] = (tmp_path / "e.tar.gz", "data/kmmlu/insurance/planted.jsonl is not listed in the manifest: the "
                                             "archive was changed after export")
    escape = tmp_path / "x.tar.gz"
    with tarfile.open(escape, "w:gz") as dst:
        info = tarfile.TarInfo("data/../../evil.txt")
        info.size = 1
        dst.addfile(info, io.BytesIO(b"x"))
    cases["escaping path"] = (escape, "member 'data/../../evil.txt' is not a data file of an evalchemy archive")
    for name, (path, message) in cases.items():
        done = script("import_data.sh", str(path), "--data-dir", str(closed))
        assert done.returncode == 3, (name, done.stderr)
        assert message in done.stderr, (name, done.stderr)
        assert "nothing was imported and the data folder is unchanged" in done.stderr, name
        assert tree(closed) == before, name
        assert sorted(p.name for p in closed.iterdir()) == ["kmmlu"], name
    assert not (tmp_path / "evil.txt").exists()
    # into a data folder that does not exist yet: a refused archive leaves no folder behind
    fresh = tmp_path / "new" / "data"
    done = script("import_data.sh", str(tmp_path / "cut.tar.gz"), "--data-dir", str(fresh))
    assert done.returncode == 3
    assert not (tmp_path / "new").exists()


def test_different_data_needs_replace(exported):
    """A file already in the data folder with other content is kept unless --replace (exit 2, nothing written)."""
    closed = exported["closed"]
    own = taskdata.write_rows(closed / "kmmlu" / "finance" / "test.jsonl", taskdata.kmmlu_rows("economics"))
    before = tree(closed)
    done = script("import_data.sh", str(exported["archive"]), "--data-dir", str(closed))
    assert done.returncode == 2, done.stderr
    assert (f"error: {exported['archive']}: 1 file in {closed} already holds different data (first: "
            "kmmlu/finance/test.jsonl); pass --replace to overwrite them. Nothing was imported") in done.stderr
    assert tree(closed) == before
    done = script("import_data.sh", str(exported["archive"]), "--data-dir", str(closed), "--replace")
    assert done.returncode == 0, done.stderr
    assert tree(closed) == tree(exported["connected"])
    assert own.read_text(encoding="utf-8") != json.dumps(taskdata.kmmlu_rows("economics")[0], ensure_ascii=False)


def test_export_fetches_a_source_missing_from_the_data_folder(write_config, tmp_path):
    """dataset.source is loaded with datasets.load_dataset (here a local repo folder of that name, as the hub
    would serve it) and saved with save_to_disk into the data folder, then exported."""
    taskdata.write_hub_mirror(tmp_path / "HAERAE-HUB" / "KMMLU", {"Accounting": "accounting"})
    config = write_config({"benchmarks": {"k": {"enabled": True, "tasks": ["kmmlu_accounting"]}},
                           "tasks": {"kmmlu_accounting": entry(
                               "kmmlu/accounting", "회계", source={"repo": "HAERAE-HUB/KMMLU",
                                                                  "subset": "Accounting"})}})
    data = tmp_path / "connected"
    done = script("export_data.sh", "--config", str(config), "--data-dir", str(data), "--output",
                  str(tmp_path / "a.tar.gz"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fetched kmmlu/accounting for task kmmlu_accounting (save_to_disk: dev 5, test 4 rows)" in done.stderr
    assert (data / "kmmlu" / "accounting" / "dataset_dict.json").is_file()
    assert localdata.read_split(localdata.detect(data / "kmmlu" / "accounting"), "test") == [
        {k: str(v) if k != "answer" else v for k, v in row.items()} | {"Human Accuracy": 0.5}
        for row in taskdata.kmmlu_rows("accounting")]


def test_export_without_data_or_source_names_the_fix(write_config, tmp_path):
    config = write_config(ready_made_config())
    done = script("export_data.sh", "--config", str(config), "--data-dir", str(tmp_path / "empty"), "--output",
                  str(tmp_path / "a.tar.gz"))
    assert done.returncode == 3
    assert (f"error: task kmmlu_insurance: no data at {tmp_path / 'empty' / 'kmmlu' / 'insurance'}: put the data "
            "there, or add dataset.source so that export can fetch it") in done.stderr
    assert not (tmp_path / "a.tar.gz").exists() and list(tmp_path.glob(".a.tar.gz*")) == []


# --- what goes wrong, and what the messages say --------------------------------------------------------------------

def test_missing_local_dataset_stops_the_run_and_names_the_import_command(server, write_config, tmp_path):
    """Exit 3 before any request, naming each missing dataset and the import/export commands."""
    data = tmp_path / "store"
    ready_made_store(data)
    import shutil

    shutil.rmtree(data / "kmmlu" / "insurance")
    config = write_config(ready_made_config())
    before = len(server.requests)
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "m", "--data-dir", str(data))
    assert done.returncode == 3, done.stderr
    assert ("datasets missing on this machine (runs are offline):\n"
            f"  kmmlu: task kmmlu_insurance: no data at {data / 'kmmlu' / 'insurance'}\n"
            "import them from an archive made on a connected machine: scripts/import_data.sh ARCHIVE "
            f"--data-dir {data} (made there with scripts/export_data.sh --config {config} --output ARCHIVE)"
            ) in done.stderr
    assert len(server.requests) == before
    # --online does not lift it: local data cannot be downloaded by lm-eval
    online = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                     "--run-id", "m2", "--data-dir", str(data), "--online")
    assert online.returncode == 3
    assert f"kmmlu: task kmmlu_insurance: no data at {data / 'kmmlu' / 'insurance'}" in online.stderr


BAD_DATA = {
    "answers counted from 0": (
        lambda d: taskdata.write_rows(d / "x" / "test.jsonl", [{**r, "answer": r["answer"] - 1}
                                                              for r in taskdata.kmmlu_rows("economics")]),
        {}, "{d}/x/test.jsonl (test split): 3 answers not in 1-4: row 3: 0, row 5: 0, row 6: 0; this data counts "
            "answers from 0: set \"answers\": \"0-3\" in the task's dataset block"),
    "letters": (
        lambda d: taskdata.write_rows(d / "x" / "test.csv", [{**r, "answer": "ABCD"[r["answer"] - 1]}
                                                            for r in taskdata.kmmlu_rows("finance")]),
        {}, "{d}/x/test.csv (test split): 4 answers not in 1-4: row 1: 'A', row 2: 'B', row 3: 'B' (and 1 more); the "
            "answers are letters: set \"answers\": \"A-D\" in the task's dataset block"),
    "missing column": (
        lambda d: taskdata.write_rows(d / "x" / "test.jsonl", [{k: v for k, v in r.items() if k != "D"}
                                                              for r in taskdata.kmmlu_rows("finance")]),
        {}, "{d}/x/test.jsonl: column D missing; the KMMLU format needs question, A, B, C, D, answer"),
    "no dev split for few-shot": (
        lambda d: taskdata.write_rows(d / "x" / "test.jsonl", taskdata.kmmlu_rows("finance")),
        {"num_fewshot": 5}, "{d}/x: 5-shot needs 5 examples in a dev (or validation) split; there is none: add "
                            "one, or lower num_fewshot"),
    "no test split": (
        lambda d: taskdata.write_rows(d / "x" / "dev.jsonl", taskdata.kmmlu_rows("finance")),
        {}, "{d}/x: no test split (splits found: dev); the questions to score must be in a split named test"),
    "mirror needs a subset": (
        lambda d: taskdata.write_hub_mirror(d / "x", {"Accounting": "accounting", "Economics": "economics"}),
        {}, "{d}/x is a dataset mirror with 2 subsets (Accounting, Economics): set dataset.subset to one of them"),
    "unknown subset": (
        lambda d: taskdata.write_hub_mirror(d / "x", {"Accounting": "accounting"}),
        {"subset": "accounting"}, "{d}/x: no subset 'accounting' (did you mean 'Accounting'?); this mirror holds: "
                                  "Accounting"),
    "broken parquet": (
        lambda d: (d / "x").mkdir(parents=True) or (d / "x" / "test.parquet").write_bytes(b"PAR1 broken"),
        {}, "{d}/x/test.parquet: cannot be read as parquet"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_unusable_data_stops_the_run_with_the_fix(case, server, write_config, tmp_path):
    write, extra, message = BAD_DATA[case]
    data = tmp_path / "store"
    write(data)
    subset = {"subset": extra.pop("subset")} if "subset" in extra else {}
    config = write_config({"benchmarks": {"b": {"enabled": True, "tasks": ["t"]}},
                           "tasks": {"t": entry("x", "라벨", **subset, **extra)}})
    before = len(server.requests)
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "bad", "--data-dir", str(data))
    assert done.returncode == 3, done.stderr
    assert "datasets that cannot be used as they are:\n  b: task t: " + message.format(d=data) in done.stderr
    assert len(server.requests) == before


def test_validate_config_catches_kmmlu_subjects_and_mixed_entries(invoke, write_config):
    """A KMMLU source subject that does not exist (Insurance) lists the 45 real ones; tasks + dataset is refused."""
    config = write_config({"benchmarks": {"k": {"enabled": True, "tasks": ["kmmlu_insurance", "both"]}},
                           "tasks": {
                               "kmmlu_insurance": entry("kmmlu/insurance", "보험학",
                                                        source={"repo": "HAERAE-HUB/KMMLU", "subset": "Insurance"}),
                               "both": {**entry("kmmlu/x", "x"), "tasks": ["arc_easy"]},
                           }})
    result = invoke("--validate-config", "--config", str(config))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {config}: 2 problems found"
    assert lines[1] == ("  tasks.both: give either tasks (lm-eval tasks to run) or dataset (local data this entry "
                        "runs as its own task), not both")
    assert lines[2].startswith("  tasks.kmmlu_insurance.dataset.source.subset: 'Insurance' is not a KMMLU subject; "
                               "KMMLU has 45 subjects and no Insurance or Finance one (domain sets such as insurance "
                               "are your own data in the KMMLU format): Accounting, Agricultural-Sciences, ")
    assert lines[2].endswith(", Taxation, Telecommunications-and-Wireless-Technology")


def test_dry_run_shows_each_dataset_and_whether_it_is_here(invoke, write_config, tmp_path):
    data = tmp_path / "store"
    taskdata.write_rows(data / "kmmlu" / "finance" / "test.jsonl", taskdata.kmmlu_rows("finance"))
    config = write_config({"benchmarks": {"k": {"enabled": True, "tasks": ["kmmlu_finance", "kmmlu_insurance"]}},
                           "tasks": {"kmmlu_finance": entry("kmmlu/finance", "금융"),
                                     "kmmlu_insurance": entry("kmmlu/insurance", "보험학")}})
    result = invoke("--dry-run", "--config", str(config), "--endpoint", "http://gpu-box:8000", "--model", "m",
                    "--tokenizer", "/models/m", "--data-dir", str(data), "--run-id", "d")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"#   data: {data / 'kmmlu' / 'finance'} (files, splits test)" in lines
    assert (f"#   data: {data / 'kmmlu' / 'insurance'} (not on this machine: scripts/import_data.sh ARCHIVE)"
            in lines)
    commands = [line for line in lines if line.startswith("lm_eval run")]
    assert len(commands) == 2 and "--tasks kmmlu_finance " in commands[0]
    include = commands[0].split("--include_path ")[1].split()[0]
    task_file = Path(include) / "kmmlu_finance.yaml"
    assert f"data_path: \"{data / 'kmmlu' / 'finance'}\"" in task_file.read_text(encoding="utf-8")
    assert not (tmp_path / "results").exists()


def test_shipped_config_from_connected_machine_to_closed_machine(server, write_config, tmp_path):
    """The whole flow with configs/eval_config.json's kmmlu_domain benchmark: on the connected machine insurance and
    finance are the user's own files and accounting/economics are fetched from their dataset.source (a local repo
    folder of that name stands in for the hub); the archive is imported on the closed machine, where a run gives the
    Korean per-subject breakdown."""
    shipped = json.loads((PROJECT / "configs" / "eval_config.json").read_text(encoding="utf-8"))
    connected = tmp_path / "connected"
    taskdata.write_rows(connected / "kmmlu" / "insurance" / "test.csv", taskdata.kmmlu_rows("insurance"))
    taskdata.write_rows(connected / "kmmlu" / "insurance" / "dev.csv", taskdata.kmmlu_rows("insurance", "dev"))
    taskdata.write_save_to_disk(connected / "kmmlu" / "finance", {"dev": taskdata.kmmlu_rows("finance", "dev"),
                                                                  "test": taskdata.kmmlu_rows("finance")})
    taskdata.write_hub_mirror(tmp_path / "HAERAE-HUB" / "KMMLU", {"Accounting": "accounting", "Economics": "economics"})
    shipped_file = write_config(shipped, "shipped.json")
    archive = tmp_path / "kmmlu.tar.gz"
    done = script("export_data.sh", "--config", str(shipped_file), "--benchmark", "kmmlu_domain", "--data-dir",
                  str(connected), "--output", str(archive), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split(" for ")[0] for line in done.stderr.splitlines() if " for task " in line] == [
        "exported kmmlu/insurance", "exported kmmlu/finance", "fetched kmmlu/accounting", "fetched kmmlu/economics"]

    closed = tmp_path / "closed"
    done = script("import_data.sh", str(archive), "--data-dir", str(closed))
    assert done.returncode == 0, done.stderr
    for name, bench in shipped["benchmarks"].items():
        bench["enabled"] = name == "kmmlu_domain"
    config = write_config(shipped, "closed.json")
    summary, prompts = run_on(server, config, closed, tmp_path / "o", "nightly")
    assert summary["breakdown"]["benchmark"] == expected_breakdown("kmmlu_domain")
    assert summary["benchmarks"]["kmmlu_domain"]["status"] == "success"
    assert prompts == 4 * sum(DOMAIN_SIZES)  # one prompt per choice
    assert summary["benchmarks"]["kmmlu_domain"]["requests"]["sent"] == requests_for(*DOMAIN_SIZES)


def test_hub_datasets_count_as_present_only_in_the_datasets_cache(tmp_path):
    """Offline, datasets loads a hub dataset only from its prepared copy (<org>___<name>/<config>); a download in
    the hub cache alone would fail in lm-eval, so the check does not accept it."""
    from evalchemy.hfcache import datasets_cached as hf_datasets_cached

    home = Path(os.environ["HF_HOME"])
    (home / "hub" / "datasets--allenai--ai2_arc" / "snapshots" / "abc").mkdir(parents=True)
    assert not hf_datasets_cached("allenai/ai2_arc", "ARC-Easy")
    (home / "datasets" / "allenai___ai2_arc" / "ARC-Challenge" / "0.0.0").mkdir(parents=True)
    assert not hf_datasets_cached("allenai/ai2_arc", "ARC-Easy")
    assert hf_datasets_cached("allenai/ai2_arc", "ARC-Challenge")
    (home / "datasets" / "openai___gsm8k" / "main-8f3a" / "0.0.0").mkdir(parents=True)
    assert hf_datasets_cached("openai/gsm8k", "main") and hf_datasets_cached("openai/gsm8k")


def test_lm_eval_hub_tasks_travel_in_the_archive(write_config, tmp_path, tokenizer):
    """An lm-eval task that loads a hub dataset: export saves a copy of it into the archive (fetched with
    load_dataset; a local repo folder of that name stands in for the hub), the closed machine stops with exit 3
    before import and scores it from the copy after, with lm-eval's own task definition."""
    from tests.test_run import FAVOURED

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_capitals.yaml").write_text(
        "task: demo_hub_capitals\ndataset_path: testorg/capitals\ndataset_name: main\noutput_type: multiple_choice\n"
        "test_split: test\nfewshot_split: validation\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1\n",
        encoding="utf-8")
    repo = tmp_path / "connected" / "testorg" / "capitals"
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in taskdata.CAPITALS]
    taskdata.write_rows(repo / "data" / "test.jsonl", rows[1:])
    taskdata.write_rows(repo / "data" / "validation.jsonl", rows[:1])
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: test\n    path: "
                                    "data/test.jsonl\n  - split: validation\n    path: data/validation.jsonl\n---\n",
                                    encoding="utf-8")
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_hub_capitals"]}},
                           "tasks": {"demo_hub_capitals": {"enabled": True, "num_fewshot": 1}}})
    archive = tmp_path / "hub.tar.gz"
    done = script("export_data.sh", "--config", str(config), "--include-path", str(tasks), "--data-dir",
                  str(tmp_path / "connected" / "data"), "--output", str(archive), cwd=tmp_path / "connected")
    assert done.returncode == 0, done.stderr
    assert "fetched hub/testorg/capitals/main for task demo_hub_capitals (hub-copy: test 5, validation 1 rows)" \
        in done.stderr

    closed = tmp_path / "closed"
    with TestServer(tokenizer, "test-model", answers={"favoured": sorted(FAVOURED)}) as srv:
        common = ["--endpoint", srv.base_url, "--config", str(config), "--include-path", str(tasks), "--output",
                  str(tmp_path / "o"), "--data-dir", str(closed)]
        before = run_cli(*common, "--run-id", "before")
        assert before.returncode == 3, before.stderr
        assert ("  capitals: task demo_hub_capitals: dataset 'testorg/capitals' (main) is not on this machine (not a "
                "local folder, not in the Hugging Face datasets cache, no copy in the data folder)\n"
                "import them from an archive made on a connected machine: scripts/import_data.sh ARCHIVE --data-dir "
                f"{closed} (made there with scripts/export_data.sh --config {config} --output ARCHIVE)") in before.stderr
        assert srv.requests == []
        imported = script("import_data.sh", str(archive), "--data-dir", str(closed))
        assert imported.returncode == 0, imported.stderr
        after = run_cli(*common, "--run-id", "after")
        assert after.returncode == 0, after.stderr
    summary = json.loads((tmp_path / "o" / "after" / "evalchemy_summary_after.json").read_text(encoding="utf-8"))
    # the first capital question is the few-shot example (validation split); the other five are scored, each by the
    # server's rule: a choice's score is the sum over its words of -0.1 if favoured else -2.0
    scored = taskdata.CAPITALS[1:]
    right = sum(max(range(4), key=lambda i: (sum(-0.1 if w in FAVOURED else -2.0 for w in c[i].split()), -i)) == a
                for _, c, a in scored)
    assert summary["benchmarks"]["capitals"]["metrics"]["demo_hub_capitals"]["acc"]["value"] == pytest.approx(
        right / len(scored))
    assert summary["benchmarks"]["capitals"]["requests"]["sent"] == requests_for(len(scored))
    assert summary["benchmarks"]["capitals"]["runs"][0]["hub_copies"] == ["demo_hub_capitals"]


def test_dry_run_command_of_a_dataset_entry_runs_as_printed(invoke, server, write_config, tokenizer, tmp_path):
    """What users copy is what runs: the printed `lm_eval run …` line, run by lm-eval's own CLI, scores the local
    data as the runner does."""
    import shlex
    import sys

    data = tmp_path / "store"
    taskdata.write_save_to_disk(data / "kmmlu" / "finance", {"dev": taskdata.kmmlu_rows("finance", "dev"),
                                                             "test": taskdata.kmmlu_rows("finance")})
    config = write_config({"benchmarks": {"k": {"enabled": True, "tasks": ["kmmlu_finance"]}},
                           "tasks": {"kmmlu_finance": entry("kmmlu/finance", "금융", num_fewshot=2)}})
    result = invoke("--dry-run", "--config", str(config), "--endpoint", server.base_url, "--model", "test-model",
                    "--tokenizer", str(tokenizer), "--data-dir", str(data), "--output", str(tmp_path / "o"),
                    "--run-id", "copy")
    assert result.exit_code == 0, result.stderr
    [line] = [x for x in result.stdout.splitlines() if x.startswith("lm_eval run ")]
    argv = shlex.split(line)
    argv[0] = str(Path(sys.executable).parent / "lm_eval")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = list((tmp_path / "o" / "copy").rglob("results_*.json"))
    scores = json.loads(results.read_text(encoding="utf-8"))["results"]["kmmlu_finance"]
    assert scores["acc,none"] == pytest.approx(taskdata.expected_accuracy("finance"))
