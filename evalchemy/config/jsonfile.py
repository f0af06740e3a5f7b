"""Reading the config file's JSON: syntax errors with line and column, and hints for what people copy from examples
(comments, trailing commas); configs nested too deep refused before the parser recurses."""

from __future__ import annotations

import json
from pathlib import Path

from evalchemy.errors import ConfigError


def _syntax_hints(text: str) -> list[tuple[int, int, str]]:
    """Comments and trailing commas outside strings: (line, column, hint), all of them, in file order."""
    hints: list[tuple[int, int, str]] = []
    line, col = 1, 1
    i, n = 0, len(text)
    in_string = False
    last_comma: tuple[int, int] | None = None
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                col += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            last_comma = None
        elif ch == "/" and text.startswith("//", i):
            hints.append((line, col, "JSON does not allow comments: delete the `//` comment"))
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == "/" and text.startswith("/*", i):
            hints.append((line, col, "JSON does not allow comments: delete the `/* */` comment"))
            end = text.find("*/", i + 2)
            stop = n if end < 0 else end + 2
            skipped = text[i:stop]
            line += skipped.count("\n")
            col = (len(skipped) - skipped.rfind("\n")) if "\n" in skipped else col + len(skipped)
            i = stop
            continue
        elif ch == ",":
            last_comma = (line, col)
        elif ch in "}]":
            if last_comma is not None:
                closer = "object" if ch == "}" else "list"
                hints.append((*last_comma, f"trailing comma before the end of an {closer}: delete this comma"))
            last_comma = None
        elif not ch.isspace():
            last_comma = None
        if ch == "\n":
            line += 1
            col = 1
        else:
            col += 1
        i += 1
    return hints


# A config is 5 levels deep (tasks.<name>.dataset.source.repo); deeper nesting is a mistake, and far deeper nesting
# would exhaust Python's recursion limit in the JSON reader.
MAX_DEPTH = 32


def _too_deep(text: str) -> tuple[int, int] | None:
    """(line, column) of the first ``[`` or ``{`` nested more than MAX_DEPTH levels deep, outside strings."""
    depth, line, line_start, in_string, escaped = 0, 1, 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, i - line_start + 1
        elif ch in "]}":
            depth -= 1
        if ch == "\n":
            line, line_start = line + 1, i + 1
    return None


def parse_json(path: Path, text: str) -> object:
    if not text.strip():
        raise ConfigError(str(path), ["the file is empty: a config is a JSON object with a \"benchmarks\" section, "
                                      "like configs/eval_config.json"])
    deep = _too_deep(text)
    if deep:
        raise ConfigError(str(path), [f"line {deep[0]}, column {deep[1]}: nested more than {MAX_DEPTH} levels deep "
                                      "(a config needs 5): look for a run of unclosed '[' or '{'"])
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        problems = [f"line {ln}, column {cl}: {hint}" for ln, cl, hint in sorted(_syntax_hints(text))]
        if not problems:
            problems = [f"line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}"]
        raise ConfigError(str(path), problems) from None
