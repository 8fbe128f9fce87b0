"""A local OpenAI-compatible judge for tests: a real HTTP server on 127.0.0.1 whose behaviour is
chosen by the URL path, and which records what it received.

    /ok/v1/chat/completions        <score>4</score>
    /slow/v1/chat/completions      answers after `slow_seconds`
    /fail/v1/chat/completions      HTTP 500
    /garbage/v1/chat/completions   a reply with no <score>
    /notjson/v1/chat/completions   a body that is not JSON
    /high/v1/chat/completions      <score>9</score> (outside 1-5)
    /flaky/v1/chat/completions     500 for the first `flaky_failures` requests, then <score>3</score>
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, slow_seconds: float = 2.0, flaky_failures: int = 2) -> None:
        self.slow_seconds, self.flaky_failures = slow_seconds, flaky_failures
        self.hits: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0  # requests being answered at once (the client's concurrency)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                mode = self.path.strip("/").split("/")[0]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.hits[mode] += 1
                    count = server.hits[mode]
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(mode, count)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, mode, count):
                if mode == "fail" or (mode == "flaky" and count <= server.flaky_failures):
                    return self._send(500, b'{"error": "boom"}')
                if mode == "slow":
                    time.sleep(server.slow_seconds)
                if mode == "notjson":
                    return self._send(200, b"<html>not json</html>")
                text = {"garbage": "I liked it a lot.", "high": "<score>9</score>", "flaky": "<score>3</score>"}.get(
                    mode, "<justification>ok</justification><score>4</score>"
                )
                reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                self._send(200, json.dumps(reply).encode())

            def _send(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1/chat/completions"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
