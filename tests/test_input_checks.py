"""Malformed --endpoint values and config files are usage errors (exit 2) naming the value and the problem, with
nothing created; benchmark names may use any script's letters."""

from __future__ import annotations

import json

import pytest

CREDENTIALS = ("error: --endpoint {shown!r}: credentials in the URL are not supported (lm-eval sends its own "
               "Authorization header): remove them and put the API key in OPENAI_API_KEY, sent as a Bearer token\n")
EXAMPLE = "expected an http(s) URL such as http://gpu-box:8000/v1/completions"


def errors(result) -> str:
    """stderr without the one-time INFO line of the task index being built."""
    return "".join(line for line in result.stderr.splitlines(keepends=True) if not line.startswith("INFO "))


@pytest.mark.parametrize("value,message", [
    ("http://host:8000/v1 /completions",
     "error: --endpoint 'http://host:8000/v1 /completions': a space at character 20; a URL cannot contain spaces or "
     "control characters: remove it (or write a space as %20)\n"),
    ("http://host:8000/v1\t/completions",
     "error: --endpoint 'http://host:8000/v1\\t/completions': the control character U+0009 at character 20; a URL "
     "cannot contain spaces or control characters: remove it (or write a space as %20)\n"),
    ("http://[::1", f"error: --endpoint 'http://[::1': not a valid URL (Invalid IPv6 URL): {EXAMPLE}\n"),
    ("http://host:99999/v1", f"error: --endpoint 'http://host:99999/v1': not a valid URL (Port out of range "
                             f"0-65535): {EXAMPLE}\n"),
    ("http://host:8000/vé/v1", "error: --endpoint 'http://host:8000/vé/v1': the path has the character 'é', which "
                               "cannot be sent as it is: write it percent-encoded (%C3%A9)\n"),
    ("http://host:8000/v1?x=1", "error: --endpoint 'http://host:8000/v1?x=***': a URL with a query string ('?') or "
                                "a fragment ('#') is not supported (requests go to …/v1/completions without it): "
                                "remove it\n"),
])
def test_malformed_endpoint_is_a_usage_error_and_creates_nothing(invoke, tmp_path, value, message):
    """A space, a control character, a broken IPv6 host, a bad port, a non-ASCII path or a query string in
    --endpoint: exit 2 with a message naming the value and the problem, and no results folder."""
    result = invoke("--endpoint", value, "--output", str(tmp_path / "o"), "--run-id", "r")
    assert result.exit_code == 2
    assert result.stderr == message
    assert result.stdout == ""
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value,shown", [
    ("http://host:8000/v1?api_key=SECRET-777", "http://host:8000/v1?api_key=***"),
    ("http://host:8000/v1/completions?key=SECRET-777&model=m", "http://host:8000/v1/completions?key=***&model=***"),
    ("http://host:8000/v1?token=SECRET-777", "http://host:8000/v1?token=***"),
    ("http://host:8000?access_token=SECRET-777", "http://host:8000?access_token=***"),
    ("http://host:8000/v1#access_token=SECRET-777", "http://host:8000/v1#***"),
    ("http://user:SECRET-777@host:8000/v1?api_key=SECRET-777", "http://***@host:8000/v1?api_key=***"),
])
def test_credentials_in_the_endpoint_query_are_refused_without_echoing_them(invoke, tmp_path, value, shown):
    """?api_key=, ?key=, ?token=, ?access_token= (or in the fragment) are refused like user:password@, and the
    secret is not repeated."""
    result = invoke("--endpoint", value, "--output", str(tmp_path / "o"), "--run-id", "r")
    assert result.exit_code == 2
    assert result.stderr == CREDENTIALS.format(shown=shown)
    assert "SECRET-777" not in result.stdout + result.stderr
    assert not (tmp_path / "o").exists()


def test_config_nested_far_too_deep_is_a_config_error(invoke, write_config, tmp_path):
    """A config nested 100,000 levels deep: exit 2 with the place it gets too deep, nothing created (it used to
    exhaust Python's recursion limit: exit 1)."""
    path = write_config('{"benchmarks":\n  ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    result = invoke("--endpoint", "http://127.0.0.1:9/v1", "--config", str(path), "--output", str(tmp_path / "o"),
                    "--run-id", "r")
    assert result.exit_code == 2
    assert errors(result) == (f"error: {path}: 1 problem found\n"
                             "  line 2, column 34: nested more than 32 levels deep (a config needs 5): look for a "
                             "run of unclosed '[' or '{'\n"
                             "(exit code 2: config error; nothing was run)\n")
    assert not (tmp_path / "o").exists()


def test_brackets_inside_strings_do_not_count_as_nesting(invoke, write_config):
    """Only real nesting counts: a description full of '[' (and an escaped quote) still validates."""
    path = write_config({"benchmarks": {"arc": {"enabled": True, "description": '"' + "[{" * 100,
                                                "tasks": ["arc_easy"]}}})
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("content", ["", "\n  \t\n", "\ufeff"])
def test_empty_config_file_says_it_is_empty(invoke, write_config, content):
    """An empty (or blank) config file is named as empty, not as 'invalid JSON: Expecting value'."""
    path = write_config(content)
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 2
    assert errors(result) == (f"error: {path}: 1 problem found\n"
                             '  the file is empty: a config is a JSON object with a "benchmarks" section, like '
                             "configs/eval_config.json\n"
                             "(exit code 2: config error; nothing was run)\n")


def test_benchmark_names_may_use_letters_of_any_script(invoke, write_config):
    """Korean (Hangul), Devanagari with its vowel signs, digits, '.', '_' and '-' are valid benchmark names."""
    path = write_config({"benchmarks": {name: {"enabled": True, "tasks": ["arc_easy"]}
                                        for name in ("보험학", "हिन्दी", "kmmlu_보험-2.0", "가" * 42)}})
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{path}: valid (4 benchmarks, 4 enabled, 4 lm-eval runs)\n"


def test_unsafe_benchmark_and_task_entry_names_are_refused_with_the_rule(invoke, write_config):
    """Benchmark names that are empty, have a space, a slash, a leading '_' or an emoji, or pass 128 UTF-8 bytes are
    refused; task entry names stay lm-eval task names (ASCII), and the message says where another script goes."""
    names = ["", "a b", "x/y", "_x", "ok🙂", "가" * 43]
    path = write_config({"benchmarks": {name: {"enabled": True, "tasks": ["arc_easy"]} for name in names},
                         "tasks": {"금융": {"enabled": True, "tasks": ["arc_easy"]}}})
    result = invoke("--validate-config", "--config", str(path))
    assert result.exit_code == 2
    rule = ("is not a valid benchmark name: use letters and digits (any script), '.', '_' and '-', starting with a "
            "letter or digit, at most 128 bytes in UTF-8 (it names the benchmark's files)")
    assert errors(result).splitlines() == [
        f"error: {path}: 7 problems found",
        *sorted(f"  benchmarks: {name!r} {rule}" for name in names),
        "  tasks: '금융' is not a valid task entry name: entry names, like the task names a benchmark lists, use "
        "ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, up to 128 (a name in another "
        "script goes in the entry's label)",
        "(exit code 2: config error; nothing was run)",
    ]
    assert "tasks" in json.loads(path.read_text(encoding="utf-8"))
