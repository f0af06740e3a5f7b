"""The route to the endpoint: direct, unless a proxy is given (``--proxy URL``); then every request goes through it.

Three HTTP clients talk to the endpoint, and each reads the proxy variables of the environment (``http_proxy``,
``https_proxy``, ``all_proxy``, ``no_proxy``) differently: the preflight (urllib) follows them, lm-eval's
one-at-a-time requests and its remote tokenizer (requests) follow them, lm-eval's concurrent requests (aiohttp,
without ``trust_env``) ignore them. Left alone, a run under cron with a proxy set would check the endpoint through
the proxy and benchmark it directly, or the other way round. So the endpoint's route ignores those variables:
this module gives urllib an opener, and in the worker makes lm-eval's requests and aiohttp clients, take the one
route. The variables still apply to everything else (hub downloads with ``--online``, ``--notify-url``).
"""

from __future__ import annotations

import base64
import os
import urllib.request
from urllib.parse import unquote, urlsplit

from evalchemy.redaction import redact_url

PROXY_ENV = "EVALCHEMY_ENDPOINT_PROXY"  # the worker's copy of --proxy


def check(url: str) -> str:
    """``url`` when it is an HTTP proxy URL (``http://[user:password@]host:port``), else ValueError saying why."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/") or \
            parts.query or parts.fragment:
        raise ValueError("expected an HTTP proxy URL such as http://proxy.example:3128")
    return url.strip()


display = redact_url  # the proxy URL without its credentials, for logs (one redactor: evalchemy.redaction)


class _Through(urllib.request.BaseHandler):
    """Send every http(s) request through one proxy, whatever ``no_proxy`` says (urllib's ProxyHandler would skip
    hosts it names)."""

    handler_order = 100  # before the handlers that open connections, as ProxyHandler

    def __init__(self, proxy: str) -> None:
        parts = urlsplit(proxy)
        self.hostport = f"{parts.hostname}:{parts.port}"
        self.authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    def _route(self, request: urllib.request.Request) -> None:
        if self.authorization:
            request.add_unredirected_header("Proxy-Authorization", self.authorization)
        request.set_proxy(self.hostport, "http")  # https: a CONNECT tunnel through the proxy

    def http_open(self, request: urllib.request.Request):
        self._route(request)
        return None  # the next handler opens the connection, to the proxy

    https_open = http_open


def opener(proxy: str | None) -> urllib.request.OpenerDirector:
    """A urllib opener that takes the endpoint's route: through ``proxy``, or direct when it is None."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if proxy:
        handlers.append(_Through(proxy))
    return urllib.request.build_opener(*handlers)


# --- in the worker: lm-eval's clients ------------------------------------------------------------------------------

def _requests_proxies(proxy: str | None) -> dict:
    # requests adds the environment's proxies to these unless the key is there; None then removes the key.
    return {"http": proxy, "https": proxy} if proxy else {"http": None, "https": None, "all": None}


def install_in_lm_eval(proxy: str | None) -> None:
    """Make the endpoint requests lm-eval sends from this process take the route: ``requests`` calls of its API
    models and remote tokenizer get explicit proxies, its aiohttp sessions ignore the environment and get
    ``proxy``. Only the names lm-eval's modules hold are replaced; ``requests`` and ``aiohttp`` stay as they are."""
    import aiohttp
    import requests
    from lm_eval import utils as lm_utils
    from lm_eval.models import api_models

    proxies = _requests_proxies(proxy)

    class EndpointSession(requests.Session):
        def request(self, method, url, *args, **kwargs):
            kwargs["proxies"] = dict(proxies)
            return super().request(method, url, *args, **kwargs)

    class Requests:
        """``requests`` as lm-eval's modules see it: the same, with the route applied."""

        def __getattr__(self, name):
            return getattr(requests, name)

        Session = EndpointSession

        @staticmethod
        def post(url, **kwargs):
            with EndpointSession() as session:
                return session.request("POST", url, **kwargs)

    def client_session(*args, **kwargs) -> aiohttp.ClientSession:
        kwargs["trust_env"] = False
        if proxy:
            kwargs["proxy"] = proxy
        return aiohttp.ClientSession(*args, **kwargs)

    api_models.requests = Requests()
    lm_utils.requests = Requests()
    api_models.ClientSession = client_session


def install_from_env() -> None:
    """The worker's start: take the route the runner passed in ``EVALCHEMY_ENDPOINT_PROXY``."""
    install_in_lm_eval(os.environ.get(PROXY_ENV) or None)
