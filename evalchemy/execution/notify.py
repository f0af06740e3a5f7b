"""``--notify-url``: POST a small JSON about the finished run. A failing notification is logged, never fatal.

``user:password@`` in the URL is sent as HTTP basic authentication (an ``Authorization`` header that is not
carried over to a redirect's target), to the URL without them; the log names the host only."""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 10.0


def message(summary: dict, summary_path: Path) -> dict:
    scores = {
        name: {"status": bench["status"], "metric": bench["primary_metric"],
               "value": summary["breakdown"]["benchmark"].get(f"{name}_accuracy")}
        for name, bench in summary["benchmarks"].items() if bench["status"] != "skipped"
    }
    return {"run_id": summary["run_id"], "status": summary["status"], "exit_code": summary["exit_code"],
            "scores": scores, "breakdown": summary["breakdown"], "summary_path": str(summary_path)}


def where(url: str) -> str:
    """The host only: webhook URLs often carry a secret in their path."""
    try:
        parts = urlsplit(url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/…"
    except ValueError:  # a malformed URL: its host cannot be told apart from the rest
        return "the --notify-url host"


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without ``user:password@``, and the basic-auth ``Authorization`` value built from them (or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    token = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), f"Basic {token}"


def secrets(url: str) -> tuple[str, ...]:
    """What of the URL must never be written: the password (the user name when there is none: a token), as given
    and decoded, and the basic-auth token built from them. Never raises, even for a malformed URL."""
    netloc = url.partition("//")[2]
    for end in "/?#":
        netloc = netloc.split(end, 1)[0]
    user, _, password = netloc.rpartition("@")[0].partition(":")
    secret = password or user
    if not secret:
        return ()
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode("utf-8")).decode("ascii")
    return secret, unquote(secret), token


def notify(url: str, summary: dict, summary_path: Path) -> bool:
    body = json.dumps(message(summary, summary_path), ensure_ascii=False).encode()
    try:
        target, authorization = split_credentials(url)
        request = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"},
                                         method="POST")
        if authorization:
            request.add_unredirected_header("Authorization", authorization)
        with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:  # noqa: S310
            logger.info("notified %s (HTTP %d)", where(url), response.status)
            return True
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        logger.warning("notification to %s failed: %s (the run's exit code is unchanged)", where(url), reason)
        return False
