"""Jinja2 rendering of the report pages: one template folder, the page's Content-Security-Policy, atomic writes.

Every page is one self-contained file: CSS inline, charts as inline SVG, no script unless its hash is in the policy,
no font, image or link fetched from anywhere (``default-src 'none'``)."""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def csp_with_script(script: str) -> str:
    """The policy, plus permission for exactly one inline script (by its SHA-256)."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"{CSP}; script-src 'sha256-{digest}'"


def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evalchemy.reports", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2", "svg.j2"), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = pct
    env.filters["num"] = num
    env.filters["md"] = md_cell
    return env


def render(template: str, **context) -> str:
    from evalchemy import __version__

    return environment().get_template(template).render(generator_version=__version__, **context)


def pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def md_cell(value) -> str:
    """Text safe in a Markdown table cell: one line, pipes escaped."""
    text = "" if value is None else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
