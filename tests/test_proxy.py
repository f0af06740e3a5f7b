"""One route to the endpoint for every client (the preflight's urllib, lm-eval's requests for single requests and
its remote tokenizer, its aiohttp for concurrent requests): direct, whatever http_proxy says, or through --proxy."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from evalchemy.testing.server import TestServer, build_test_tokenizer
from tests import taskdata
from tests.test_run import FAVOURED, expected_capitals, run_cli

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    written = taskdata.write_tasks(folder)
    return {"tokenizer": build_test_tokenizer(folder / "tokenizer", taskdata.vocabulary()), **written}


class Listener:
    """A TCP port that records every connection made to it and closes it at once (a proxy that must stay unused)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.connections = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


class ForwardingProxy:
    """A plain HTTP forward proxy: reads absolute-URI requests, sends them on, returns the answer; records
    (method, path) of each."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self.send_error(400, "a forward proxy takes absolute http:// URIs")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-connection", "connection", "keep-alive", "host")}
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                path = target.path + (f"?{target.query}" if target.query else "")
                upstream.request(self.command, path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                proxy.forwarded.append((self.command, target.path))
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type") or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def env_proxy(monkeypatch):
    """http_proxy and friends point at a listener, and no_proxy exempts nothing."""
    listener = Listener()
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, listener.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield listener
    listener.sock.close()


def _run(assets, write_config, tmp_path, server, concurrency: str, *extra: str):
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["demo_capitals"]}}})
    done = run_cli("--endpoint", server.base_url, "--config", str(config), "--output", str(tmp_path / "o"),
                   "--run-id", "p", "--include-path", str(assets["tasks_dir"]), "--concurrency", concurrency,
                   "--batch-size", "2", *extra)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "p" / "evalchemy_summary_p.json").read_text(encoding="utf-8"))
    assert summary["tokenizer"]["backend"] == "remote"
    assert summary["benchmarks"]["capitals"]["metrics"]["demo_capitals"]["acc"]["value"] == \
        pytest.approx(expected_capitals())
    return summary


@pytest.mark.parametrize("concurrency", ["1", "4"], ids=["single requests", "concurrent requests"])
def test_environment_proxy_is_not_used_for_the_endpoint(assets, write_config, tmp_path, env_proxy, concurrency):
    """With http_proxy set and no --proxy, the preflight, the remote tokenizer and every completion request go
    straight to the endpoint: the proxy gets no connection."""
    with TestServer(assets["tokenizer"], "test-model", root="/models/not-here", tokenizer_endpoints=True,
                    answers={"favoured": sorted(FAVOURED)}) as server:
        summary = _run(assets, write_config, tmp_path, server, concurrency)
        completions = len(server.requests)
    assert summary["benchmarks"]["capitals"]["requests"]["sent"] == completions > 0
    assert env_proxy.connections == 0


@pytest.mark.parametrize("concurrency", ["1", "4"], ids=["single requests", "concurrent requests"])
def test_proxy_flag_routes_every_request_through_the_proxy(assets, write_config, tmp_path, env_proxy, monkeypatch,
                                                            concurrency):
    """With --proxy, every request to the endpoint goes through that proxy, even for a host no_proxy names; the
    environment's proxy still gets nothing."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    proxy = ForwardingProxy()
    try:
        with TestServer(assets["tokenizer"], "test-model", root="/models/not-here", tokenizer_endpoints=True,
                        answers={"favoured": sorted(FAVOURED)}) as server:
            _run(assets, write_config, tmp_path, server, concurrency, "--proxy", proxy.url)
            completions = len(server.requests)
    finally:
        proxy.close()
    paths = {path for _, path in proxy.forwarded}
    assert paths == {"/v1/models", "/version", "/tokenizer_info", "/tokenize", "/v1/completions"}
    assert [p for _, p in proxy.forwarded].count("/v1/completions") == completions > 0
    assert env_proxy.connections == 0


def test_proxy_flag_takes_an_http_proxy_url(invoke, write_config):
    """A --proxy that is not http://host:port is a usage error (exit 2), and its credentials are not echoed."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["arc_easy"]}}})
    result = invoke("--endpoint", "http://127.0.0.1:9", "--config", str(config), "--proxy",
                    "socks5://user:secret@proxy:1080")
    assert result.exit_code == 2
    assert result.stderr == "error: --proxy 'proxy:1080': expected an HTTP proxy URL such as " \
                            "http://proxy.example:3128\n"


def test_proxy_flag_is_refused_for_the_embedded_model(invoke, write_config):
    """The embedded model is on this machine: --proxy with --endpoint local is a usage error (exit 2)."""
    config = write_config({"benchmarks": {"capitals": {"enabled": True, "tasks": ["arc_easy"]}}})
    result = invoke("--endpoint", "local", "--config", str(config), "--proxy", "http://proxy:3128")
    assert result.exit_code == 2
    assert result.stderr == "error: --proxy is for a remote endpoint: the embedded model (--endpoint local) runs on " \
                            "this machine and is always reached directly; drop --proxy\n"
