"""``--notify-url``: POST a small JSON about the finished run. A failing notification is logged, never fatal."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

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
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


def notify(url: str, summary: dict, summary_path: Path) -> bool:
    body = json.dumps(message(summary, summary_path), ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_S) as response:  # noqa: S310
            logger.info("notified %s (HTTP %d)", where(url), response.status)
            return True
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        logger.warning("notification to %s failed: %s (the run's exit code is unchanged)", where(url), reason)
        return False
