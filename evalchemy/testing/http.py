"""The test server's HTTP side: routes, authorization, request bodies and the faults injected around answers."""

from __future__ import annotations

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from evalchemy.testing.behaviour import error_body, error_type

MAX_BODY_BYTES = 64 * 1024 * 1024
IDLE_CONNECTION_S = 120  # a keep-alive connection with no request for this long is closed
VERSION = "0.0.0+evalchemy.testing.server"


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: socketserver's 5 drops a burst of connections (the client's SYN is
    # sent again a second later); uvicorn, which serves vLLM, listens with 2048

    def handle_error(self, request, client_address) -> None:  # a client that went away is not news
        pass


class Handler(BaseHTTPRequestHandler):
    """One connection to a TestServer (``self.server.app``)."""

    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""
    disable_nagle_algorithm = True  # else small answers wait ~40 ms for delayed ACKs, like no real server
    timeout = IDLE_CONNECTION_S

    @property
    def app(self):
        """The TestServer this request is for."""
        return self.server.app

    def setup(self) -> None:
        super().setup()
        self.app._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.app._track(self.connection, False)

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict | bytes) -> None:
        if code >= 400 and not self._body_read and (self.headers.get("Content-Length") or "0") != "0":
            self.close_connection = True  # the unread body must not be taken for the next request
        data = body if isinstance(body, bytes) else orjson.dumps(body)  # compact UTF-8, as vLLM's FastAPI
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _gone(self) -> bool:
        """A stopped or dead server answers nothing: the client sees the connection close."""
        if self.app._closed.is_set():
            self.close_connection = True
            return True
        return False

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _authorized(self) -> bool:
        if not self.app.api_key or not self._path().startswith("/v1"):
            return True
        if self.headers.get("Authorization") == f"Bearer {self.app.api_key}":
            return True
        self._send(401, {"error": "Unauthorized"})
        return False

    def _json_body(self) -> dict | None:
        """The request's JSON object, or None after answering 400/411/413."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send(411, error_body("a Content-Length header is required", "LengthRequiredError", 411))
            return None
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, error_body(f"request body over {MAX_BODY_BYTES} bytes", "RequestTooLargeError",
                                   413))
            return None
        raw = self.rfile.read(int(length))
        self._body_read = True
        try:
            body = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:  # orjson.JSONDecodeError is a ValueError
            self._send(400, error_body(f"JSON decode error: {err}", "BadRequestError", 400))
            return None
        if not isinstance(body, dict):
            self._send(400, error_body("the request body must be a JSON object", "BadRequestError", 400))
            return None
        return body

    def _route(self, method: str) -> None:
        self._body_read = False
        if self._gone() or not self._authorized():
            return
        path = self._path()
        routes = {("GET", "/v1/models"), ("GET", "/health")}
        if self.app.version_route:
            routes.add(("GET", "/version"))
        if self.app.completions_route:
            routes.add(("POST", "/v1/completions"))
        if self.app.chat_route:
            routes.add(("POST", "/v1/chat/completions"))
        if self.app.tokenizer_endpoints:
            routes |= {("GET", "/tokenizer_info"), ("POST", "/tokenize"), ("POST", "/detokenize")}
        if (method, path) not in routes:
            if any(p == path for _, p in routes):
                self._send(405, {"detail": "Method Not Allowed"})
            else:
                self._send(404, {"detail": "Not Found"})
            return
        if path == "/v1/models":
            self._send(200, self.app.models())
        elif path == "/health":
            self._send(200, b"")
        elif path == "/version":
            self._send(200, {"version": VERSION})
        elif path == "/tokenizer_info":
            self._send(200, self.app.tokenizer_info())
        elif path == "/v1/completions":
            self._completions(self.app.complete)
        elif path == "/v1/chat/completions":
            self._completions(self.app.chat)
        else:
            body = self._json_body()
            if body is not None:
                self._send(*(self.app.tokenize(body) if path == "/tokenize" else self.app.detokenize(body)))

    def _completions(self, complete) -> None:
        body = self._json_body()
        if body is None:
            return
        arrived = time.monotonic()
        number = self.app._arrived(body)
        taken = self.app._acquire(body)
        if taken is None:
            self.close_connection = True
            return
        slots, started = taken  # started: when the modelled server took the request up (see testing/slots.py)
        dying = False
        try:
            if self.app.hang and number > self.app.hang_after:
                self.app._closed.wait(self.app.hang)
            if self._gone():
                return
            echo_only = self.app.fail_echo_headers and not (self.app.fail_first or self.app.fail_status)
            if number <= self.app.fail_first or self.app.fail_status or echo_only:
                code = self.app.fail_status or 500
                message = "injected failure"
                if self.app.fail_echo_headers:
                    message += f"; request headers: {json.dumps(dict(self.headers.items()))}"
                answer = code, error_body(message, error_type(code), code)
            elif self.app.malformed:
                answer = 200, b'{"choices": [ this is not json'
            else:
                answer = complete(body)
            # the latency includes the work, as a real server's does
            done = max(started + self.app.latency, time.monotonic())
            self.app._closed.wait(max(0.0, done - time.monotonic()))
            if self._gone():
                return
            dying = self.app._count_answer()
            if dying and not self.app.die_exits_process:
                self.app._stop_listening()  # before answering, so the next connection is refused
            with self.app._lock:  # before the write, so a client that has its answer sees it counted
                self.app.timings.append((arrived, time.monotonic()))
            # the sequences are done: as in vLLM, they leave the batch before the answer is written out
            self.app._release(slots, done)
            slots = 0
            self._send(*answer)
        finally:
            self.app._release(slots, time.monotonic())
            if dying:
                if self.app.die_exits_process:
                    os._exit(1)
                self.app.stop()

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")
