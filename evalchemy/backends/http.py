"""JSON over HTTP for the preflight's checks of an endpoint: the route the run's requests take (straight to the
endpoint, or through ``--proxy``), the API key as a Bearer token."""

from __future__ import annotations

import json
import urllib.request

from evalchemy import proxy as proxy_mod


def call_json(url: str, api_key: str | None, timeout: float, proxy: str | None = None, body: dict | None = None):
    """GET ``url`` (or POST ``body`` as JSON) and return the parsed answer. urllib's errors (HTTPError for a non-2xx
    status, URLError, TimeoutError) and ValueError for an answer that is not JSON propagate."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with proxy_mod.opener(proxy).open(request, timeout=timeout) as response:  # http(s) only, checked before
        return json.loads(response.read().decode("utf-8"))
