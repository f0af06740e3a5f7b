"""The package's shape: no import cycles between evalchemy's modules, test infrastructure off the runtime path."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "evalchemy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every evalchemy module ``path`` imports, at the top or inside a function (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "task_templates" not in p.parts]
    known = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, known) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle():
    """The checker itself finds a cycle through a lazy import."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    """No evalchemy module imports one that (directly or not) imports it back, counting lazy imports."""
    graph = import_graph()
    assert "evalchemy.execution.runner" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_testing_package_is_off_the_runtime_path():
    """Only tests and benchmarks import evalchemy.testing; no product module does."""
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if not m.startswith("evalchemy.testing")
                   and any(d.startswith("evalchemy.testing") for d in deps))
    assert users == []


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
FROZEN = "store/migrations/versions"  # schema history as it was shipped: never edited, so never split


def oversized(package: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES, as 'path[:line name] (n lines)'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(FROZEN):
            continue
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{rel} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_oversized_finds_long_modules_and_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n" + "\n" * MAX_MODULE_LINES, encoding="utf-8")
    (tmp_path / "short.py").write_text("def g():\n    return 1\n", encoding="utf-8")
    assert oversized(tmp_path) == [f"long.py ({MAX_FUNCTION_LINES + 1 + MAX_MODULE_LINES} lines)",
                                   f"long.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_module_over_400_lines_and_no_function_over_60():
    assert oversized(PACKAGE) == []


CLI_FLAG = re.compile(r"--(endpoint|tokenizer|model|config|data-dir|online|output|run-id|gpu|store|broker|replace|"
                      r"benchmark|include-path|max-length|request-timeout|concurrency|batch-size|proxy|backend)\b(?![-_])")


def flags_in_raised_messages(path: Path) -> list[str]:
    """``file:line`` of every string literal inside a ``raise`` statement that spells one of the CLI's flags."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for inner in ast.walk(node.exc):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str) and CLI_FLAG.search(inner.value):
                    found.append(f"{path.name}:{inner.lineno}")
    return found


def test_flag_finder_sees_flags_in_raised_f_strings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('def f(x):\n    raise ValueError(f"{x}: pass --tokenizer a folder")\n'
                      'def g():\n    raise ValueError("uses --model_args, which is lm-eval\'s")\n', encoding="utf-8")
    assert flags_in_raised_messages(sample) == ["sample.py:2"]


def test_library_errors_name_settings_not_flags():
    """Outside cli/ (and the test server), errors mark the settings they speak of (errors.setting); only the CLI
    spells them as flags."""
    library = [p for p in PACKAGE.rglob("*.py") if not {"cli", "testing"} & set(p.relative_to(PACKAGE).parts)]
    assert [hit for path in library for hit in flags_in_raised_messages(path)] == []
