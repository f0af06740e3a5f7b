"""Every file evalchemy replaces (summary, results, data archive, generated task file, task-index cache) is written by
one writer: temporary file in the same folder, fsync, rename, fsync of the folder; nothing left behind on failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalchemy import atomic

from evalchemy.datasets import task_files

from evalchemy.results import summary

from evalchemy.engines.lm_eval import taskindex
from evalchemy.cli.app import export_data


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """The path behind every descriptor passed to os.fsync, in order (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_writer_fsyncs_the_file_then_the_folder(tmp_path, fsyncs):
    """The temporary file is fsynced before the rename and the folder after it; the target holds the new text."""
    target = tmp_path / "out" / "summary.json"
    atomic.write_json(target, {"b": 1, "a": "가"})
    assert target.read_text(encoding="utf-8") == '{\n  "a": "가",\n  "b": 1\n}\n'
    assert len(fsyncs) == 2
    assert Path(fsyncs[0]).parent == target.parent and Path(fsyncs[0]).name.startswith(".summary.json.")
    assert fsyncs[0].endswith(".tmp")
    assert fsyncs[1] == str(target.parent)
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_failed_write_leaves_no_temporary_file_and_the_old_file(tmp_path):
    """A rename that fails, or a writer that raises midway, leaves the old file and no temporary file."""
    folder = tmp_path / "out"
    target = folder / "archive.tar.gz"
    atomic.write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic.replacing(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("midway")
    (folder / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic.write_text(folder / "sub", "new")
    assert sorted(p.name for p in folder.iterdir()) == ["archive.tar.gz", "sub"]
    assert target.read_bytes() == b"old"
    assert list((folder / "sub").iterdir()) == []


def _summary(folder: Path, monkeypatch) -> Path:
    summary.write_json_atomic(folder / "evalchemy_summary_r.json", {"schema_version": 1})
    return folder / "evalchemy_summary_r.json"


def _task_file(folder: Path, monkeypatch) -> Path:
    task_folder = task_files.write_task_file(folder, "kmmlu_x", folder / "data", None, "1-4")
    return task_folder / "kmmlu_x.yaml"


def _index_cache(folder: Path, monkeypatch) -> Path:
    monkeypatch.setenv("EVALCHEMY_CACHE_DIR", str(folder))
    taskindex.builtin_index()
    return next(folder.glob(f"task_index_v{taskindex.INDEX_FORMAT}_lm_eval_*.json"))


def _archive(folder: Path, monkeypatch) -> Path:
    data = folder / "data"
    (data / "kmmlu" / "x").mkdir(parents=True)
    rows = [{"question": "q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": 1, "Category": "x"}]
    (data / "kmmlu" / "x" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = folder / "c.json"
    config.write_text(json.dumps({
        "benchmarks": {"b": {"enabled": True, "tasks": ["kmmlu_x"]}},
        "tasks": {"kmmlu_x": {"enabled": True, "dataset": {"path": "kmmlu/x"}}},
    }), encoding="utf-8")
    output = folder / "carry" / "x.tar.gz"
    result = CliRunner().invoke(export_data, ["--config", str(config), "--data-dir", str(data), "--output",
                                              str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return output


@pytest.mark.parametrize("write", [_summary, _task_file, _index_cache, _archive],
                         ids=["summary", "task file", "task-index cache", "data archive"])
def test_every_writer_fsyncs_its_file_and_folder(tmp_path, monkeypatch, fsyncs, write):
    """Each of the four places that replace a file fsyncs the new file and, after the rename, its folder."""
    target = write(tmp_path, monkeypatch)
    assert target.is_file()
    file_syncs = [p for p in fsyncs if Path(p).parent == target.parent and Path(p).name.startswith(f".{target.name}.")]
    assert len(file_syncs) == 1
    assert fsyncs[fsyncs.index(file_syncs[0]) + 1] == str(target.parent)
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []
