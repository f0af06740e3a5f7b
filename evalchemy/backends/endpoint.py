"""An endpoint's URLs from what the user typed: ``http://h:8000``, ``…/v1``, ``…/v1/completions`` (or, for chat
servers, ``…/v1/chat/completions``), every malformation a usage error that names the value (credentials hidden)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from evalchemy.errors import UsageError, setting
from evalchemy.redaction import redact_url as _redact

_ENDPOINT = setting("endpoint")


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests. ``completions_url`` may carry credentials; ``display`` never does."""

    completions_url: str
    models_url: str
    server_base: str
    display: str
    proxy: str | None = field(default=None, repr=False)  # the route: through this HTTP proxy, or direct (None)

    @property
    def display_models_url(self) -> str:
        return _redact(self.models_url)


# A query parameter whose name says it carries a secret: refused like user:password, and never echoed.
CREDENTIAL_PARAMETER = re.compile(r"key|token|secret|passw|auth|sig|credential", re.IGNORECASE)


def _parse(raw: str):
    """urlsplit, with the URL's malformations as usage errors naming the value and the problem."""
    bad = re.search(r"[\x00-\x20\x7f]", raw)
    if bad:
        found = "a space" if bad.group() == " " else f"the control character U+{ord(bad.group()):04X}"
        raise UsageError(f"{_ENDPOINT} {_redact(raw)!r}: {found} at character {bad.start() + 1}; a URL cannot "
                         "contain spaces or control characters: remove it (or write a space as %20)")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as err:
        raise UsageError(f"{_ENDPOINT} {_redact(raw)!r}: not a valid URL ({err}): expected an http(s) URL such as "
                         "http://gpu-box:8000/v1/completions") from None
    wide = re.search(r"[^\x00-\x7f]", parts.path)
    if wide:
        raise UsageError(f"{_ENDPOINT} {_redact(raw)!r}: the path has the character {wide.group()!r}, which cannot be "
                         f"sent as it is: write it percent-encoded ({quote(wide.group())})")
    return parts


def normalize(url: str, route: str = "completions") -> Endpoint:
    """Accept ``http://h:8000``, ``http://h:8000/v1``, ``http://h/prefix/v1/completions`` and return the URLs;
    ``route="chat"``: ``…/v1/chat/completions`` is where requests go (``completions_url``)."""
    raw = url.strip()
    parts = _parse(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"{_ENDPOINT} {_redact(raw)!r}: expected an http(s) URL such as http://gpu-box:8000/v1/completions "
            "(or 'local' for the embedded model)"
        )
    if "," in raw:
        raise UsageError(f"{_ENDPOINT} {_redact(raw)!r}: a URL with a comma cannot be passed to lm-eval")
    names = [item.split("=", 1)[0] for item in re.split(r"[&;]", f"{parts.query}&{parts.fragment}") if item]
    if parts.username is not None or parts.password is not None or any(map(CREDENTIAL_PARAMETER.search, names)):
        raise UsageError(
            f"{_ENDPOINT} {_redact(raw)!r}: credentials in the URL are not supported (lm-eval sends its own "
            "Authorization header): remove them and put the API key in OPENAI_API_KEY, sent as a Bearer token"
        )
    if parts.query or parts.fragment:
        raise UsageError(f"{_ENDPOINT} {_redact(raw)!r}: a URL with a query string ('?') or a fragment ('#') is not "
                         "supported (requests go to …/v1/completions without it): remove it")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions") and route != "chat":
        raise UsageError(
            f"{_ENDPOINT} {raw!r}: this is a chat endpoint; evalchemy needs the completions endpoint "
            "(…/v1/completions): chat endpoints return no prompt log-probabilities for multiple-choice tasks"
        )
    for suffix in ("/v1/chat/completions", "/v1/completions", "/completions", "/v1/models", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    completions = f"{base}/v1/chat/completions" if route == "chat" else f"{base}/v1/completions"
    return Endpoint(
        completions_url=completions,
        models_url=f"{base}/v1/models",
        server_base=base,
        display=_redact(completions),
    )
