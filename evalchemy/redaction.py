"""Credentials never reach a file, a log or the terminal: redaction at the source, and a final scan of the run folder.

- ``Redactor.scrub(text)`` replaces, with ``***``: the value of every registered secret (the API key, the
  ``--notify-url`` password; also their JSON-escaped and percent-encoded forms), the value of any
  ``Authorization`` / ``Proxy-Authorization`` header however it is printed (an HTTP header line, a Python or
  JSON dict, aiohttp's ``CIMultiDictProxy``), any ``Bearer <token>``, and ``user:password@`` in URLs.
- ``RedactingFilter``: a logging filter that scrubs a record's message, arguments, exception text and stack before
  any handler formats it. ``guard_logging()`` puts it on every handler of the root logger and on lm-eval's and the
  HTTP clients' loggers (and their handlers). The runner and the lm-eval worker call it after setting up handlers.
- ``ScrubbingStream``: wraps ``sys.stdout`` / ``sys.stderr`` in the worker, whose file descriptors 1 and 2 point
  at the benchmark log (print, tracebacks and progress bars go there without logging).
- ``scan_run_folder(run_dir, redactor)``: at the end of a run, every file under the run folder (text or binary) is
  searched for the secrets' bytes; each occurrence is overwritten in place with as many ``*`` bytes, so that binary
  files such as the request cache's sqlite database stay valid. The files are named in a warning (never the
  secret) and returned for the summary's ``secrets`` block.

Secrets shorter than ``MIN_SECRET_CHARS`` are not searched for by value (replacing every ``abc`` in every file
would destroy results); they are still removed from ``Authorization`` headers and ``Bearer`` tokens.
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

REDACTED = "***"
MIN_SECRET_CHARS = 6
# Loggers of the libraries that send the key: a filter on a logger only sees records logged on it (not its children),
# so every existing logger under these names gets it too. Handlers are where the guarantee lies.
GUARDED_LOGGERS = ("lm_eval", "aiohttp", "urllib3", "requests", "urllib", "httpx", "httpcore", "openai")

# The value of an Authorization header, whatever prints it: `Authorization: Bearer x` (HTTP), `'Authorization':
# 'Bearer x'` (a Python dict or aiohttp's CIMultiDictProxy), `"Authorization": "Bearer x"` (JSON, also escaped
# inside a JSON string as `\"Authorization\": \"Bearer x\"`), `authorization=Bearer x`. The value ends at a quote,
# a backslash, a line end, or a separator.
_AUTHORIZATION = re.compile(
    r"""(\b(?:proxy-)?authorization\b(?:\\*["'])?\s*[:=]\s*(?:b?\\*["'])?)[^"'\\\r\n,;}]+""", re.IGNORECASE)
# `Bearer <token>` anywhere (not the words "Bearer token(s)" of a help text).
_BEARER = re.compile(r"\b(bearer(?:\s+|%20|\+))(?!tokens?\b)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
# `scheme://user:password@` in URLs.
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@'\"]+:[^/\s@'\"]*@", re.IGNORECASE)


def _forms(value: str) -> list[str]:
    """The ways a secret may be written: as is, escaped in JSON, percent-encoded."""
    forms = [value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1], quote(value, safe="")]
    return list(dict.fromkeys(forms))


class Redactor:
    """The secrets of a run and the patterns of credentials, removed from text and from files."""

    def __init__(self, values: Iterable[str | None] = ()):
        self._values: list[str] = []
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_CHARS:
            return
        for form in _forms(value):
            if form not in self._values:
                self._values.append(form)
        self._values.sort(key=len, reverse=True)  # a longer form first, so no part of it is left behind

    def __bool__(self) -> bool:
        return bool(self._values)

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        if "uthorization" in text or "UTHORIZATION" in text:
            text = _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)
        text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
        if "@" in text:
            text = _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", text)
        return text

    def needles(self) -> list[bytes]:
        return list(dict.fromkeys(v.encode("utf-8") for v in self._values))


REDACTOR = Redactor()  # what every log record and the worker's output is scrubbed of


def protect(*values: str | None) -> None:
    """Register secrets (the API key, a notification password) for the logging filter and the worker's streams."""
    for value in values:
        REDACTOR.add(value)


def scrub(text: str) -> str:
    return REDACTOR.scrub(text)


def scrub_data(value):
    """Every string of a JSON-like structure (dict keys included) scrubbed."""
    if isinstance(value, str):
        return REDACTOR.scrub(value)
    if isinstance(value, dict):
        return {scrub_data(k): scrub_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_data(v) for v in value]
    return value


# -- logging ---------------------------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Scrubs a record in place before it is formatted: message with its arguments, exception and stack text."""

    def __init__(self, redactor: Redactor = REDACTOR):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not let its arguments through unscrubbed
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = self.redactor.scrub(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None  # handlers that render the exception object themselves would bypass the text
        if record.exc_text:
            record.exc_text = self.redactor.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.scrub(record.stack_info)
        return True


FILTER = RedactingFilter()


def _guard(target: logging.Filterer) -> None:
    if FILTER not in target.filters:
        target.addFilter(FILTER)


def guard_logging() -> None:
    """Put the redacting filter on every handler of the root logger, and on lm-eval's and the HTTP clients'
    loggers and handlers. Call it again after adding handlers or importing lm-eval (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        _guard(handler)
    names = [name for name in list(logging.root.manager.loggerDict)
             if any(name == base or name.startswith(base + ".") for base in GUARDED_LOGGERS)]
    for name in {*GUARDED_LOGGERS, *names}:
        library_logger = logging.getLogger(name)
        _guard(library_logger)
        for handler in library_logger.handlers:
            _guard(handler)


class ScrubbingStream(io.TextIOBase):
    """A text stream that scrubs what is written to it, a line at a time (a line is never split by a header value),
    before passing it on. Partial lines (progress bars redraw with ``\\r``) are passed on at ``flush()``."""

    MAX_PENDING = 1 << 16

    def __init__(self, stream, redactor: Redactor = REDACTOR):
        super().__init__()
        self._stream = stream
        self._redactor = redactor
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if len(self._pending) > self.MAX_PENDING:
            cut = len(self._pending)
        if cut:
            self._stream.write(self._redactor.scrub(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._redactor.scrub(self._pending))
            self._pending = ""
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:
        return self._stream.encoding

    @property
    def errors(self) -> str | None:
        return self._stream.errors

    @property
    def buffer(self):  # bytes written here bypass the scrub; the run folder's final scan still catches them
        return self._stream.buffer


# -- the final scan of the run folder ---------------------------------------------------------------------------


def _scrub_file(path: Path, needles: list[bytes]) -> bool:
    """Overwrite every occurrence of a needle with as many ``*`` bytes, in place; True when one was found."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        if not any(view.find(needle) != -1 for needle in needles):
            return False
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as view:
        for needle in needles:
            start = view.find(needle)
            while start != -1:
                view[start:start + len(needle)] = b"*" * len(needle)
                start = view.find(needle, start + len(needle))
        view.flush()
    return True


def scan_run_folder(run_dir: Path, redactor: Redactor) -> dict:
    """Search every file under ``run_dir`` (links are not followed) for the secrets and overwrite them.

    Returns the summary's ``secrets`` block: ``scrubbed_files`` (found and overwritten) and ``failed_files`` (could
    not be read or written), paths relative to ``run_dir``. Both lists are named in a warning; the secret is not."""
    needles = redactor.needles()
    scrubbed: list[str] = []
    failed: list[str] = []
    for path in sorted(run_dir.rglob("*")) if needles else []:
        if path.is_symlink() or not path.is_file():
            continue
        name = str(path.relative_to(run_dir))
        try:
            if _scrub_file(path, needles):
                scrubbed.append(name)
        except (OSError, ValueError):
            failed.append(name)
    if scrubbed:
        logger.warning("the API key (or another credential) was found in %d file(s) of the run folder and "
                       "overwritten with '*': %s", len(scrubbed), ", ".join(scrubbed))
    if failed:
        logger.warning("%d file(s) of the run folder could not be searched for the API key: %s; check them "
                       "before sharing the folder", len(failed), ", ".join(failed))
    return {"scrubbed_files": scrubbed, "failed_files": failed}


# URLs in messages: the one place that hides a URL's credentials


def strip_credentials(url: str) -> str:
    """The URL without user:password (for the summary and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_url(raw: str) -> str:
    """The URL for messages and logs: user:password, every query value and the fragment replaced by ``***``, even
    when it does not parse as a URL."""
    text = re.sub(r"//[^/?#]*@", "//***@", raw, count=1)
    head, hash_mark, fragment = text.partition("#")
    base, question_mark, query = head.partition("?")
    query = "&".join(item.split("=", 1)[0] + "=***" if "=" in item else item and "***" for item in query.split("&"))
    return base + question_mark + query + hash_mark + ("***" if fragment else "")
