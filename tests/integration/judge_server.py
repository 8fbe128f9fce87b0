"""A local OpenAI-compatible judge for tests: a real HTTP server on 127.0.0.1 whose behaviour is
chosen by the URL path, and which records what it received.

Answers:       /ok/... <score>4</score>   /flaky/... 500 for the first `flaky_failures` requests,
               then <score>3</score>      /slow/... answers after `slow_seconds`
Bodies (200):  see REPLIES: no score, not JSON, wrong JSON shapes, not UTF-8, off-scale scores
Statuses:      /fail/... 500   /redirect/... 302 to `redirect_to`   /ratelimit/... 429 with
               `Retry-After: retry_after` for the first `flaky_failures`, then <score>3</score>
               /ratelimit_date/... the same with an HTTP-date   /unavailable/... 503 + Retry-After
Transport:     /reset/... RST after reading the request   /close/... closes without a reply
               /nothttp/... an SSH banner   /truncated/... half the body promised   /hang/... never
               answers   /trickle/... a valid reply, its body one byte every `trickle_seconds`
               /trickle_headers/... the status line, one byte every `trickle_seconds`
               /huge_headers/... a 100 KiB header line
Chaos:         /chaos/... of every 10 requests (counted in arrival order) 3 reset the connection,
               1 hangs, 6 get <score>3</score>
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat(content) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


OK_TEXT = "<justification>ok</justification><score>4</score>"
# 200 replies whose body is not a usable chat completion, or whose score is not usable.
REPLIES = {
    "garbage": chat("I liked it a lot."),
    "notjson": b"<html>not json</html>",
    "empty_body": b"",
    "json_list": b"[]",
    "json_null": b"null",
    "no_choices": b'{"id": "x"}',
    "choices_empty": b'{"choices": []}',
    "choices_string": b'{"choices": "x"}',
    "choice_not_object": b'{"choices": [3]}',
    "message_null": b'{"choices": [{"message": null}]}',
    "content_number": b'{"choices": [{"message": {"content": 5}}]}',
    "content_null": b'{"choices": [{"message": {"content": null}}]}',
    "not_utf8": b'{"choices": [{"message": {"content": "\xff\xfe<score>4</score>"}}]}',
    "negative": chat("<score>-3</score>"),
    "high": chat("<score>9</score>"),
    "infinite": chat(f"<score>{'9' * 400}</score>"),
}


# /chaos/: what the n-th request (counted from 1, in arrival order) gets, by n % 10; the others a score
CHAOS = {1: "reset", 4: "reset", 7: "reset", 9: "hang"}


class JudgeServer:
    def __init__(
        self,
        slow_seconds: float = 2.0,
        flaky_failures: int = 2,
        retry_after: float = 1.0,
        trickle_seconds: float = 0.2,
        redirect_to: str | None = None,
    ) -> None:
        self.slow_seconds, self.flaky_failures, self.retry_after = slow_seconds, flaky_failures, retry_after
        self.trickle_seconds, self.redirect_to = trickle_seconds, redirect_to
        self.hits: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0  # requests being answered at once (the client's concurrency)
        self.closing = threading.Event()  # releases hanging handlers
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
                except OSError:  # the client gave up or was cut off (timeout tests)
                    self.close_connection = True
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, mode, count):
                early = count <= server.flaky_failures
                if mode == "fail" or (mode == "flaky" and early):
                    return self._send(500, b'{"error": "boom"}')
                if mode in ("ratelimit", "ratelimit_date", "unavailable") and early:
                    wait = (
                        str(server.retry_after)
                        if mode != "ratelimit_date"
                        else formatdate(time.time() + server.retry_after, usegmt=True)
                    )
                    return self._send(
                        503 if mode == "unavailable" else 429, b'{"error": "later"}', {"Retry-After": wait}
                    )
                if mode == "redirect":
                    return self._send(302, b"", {"Location": server.redirect_to})
                if mode in REPLIES:
                    return self._send(200, REPLIES[mode])
                if mode == "chaos" and count % 10 in CHAOS:
                    return TRANSPORT[CHAOS[count % 10]](self)
                if mode in TRANSPORT:
                    return TRANSPORT[mode](self)
                if mode == "slow":
                    time.sleep(server.slow_seconds)
                text = (
                    "<score>3</score>"
                    if mode in ("flaky", "ratelimit", "ratelimit_date", "unavailable", "chaos")
                    else OK_TEXT
                )
                self._send(200, chat(text))

            def _send(self, status, payload, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _reset(self):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self._drop()

            def _drop(self):
                self.close_connection = True
                self.connection.close()

            def _nothttp(self):
                self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
                self._drop()

            def _truncated(self):
                payload = chat(OK_TEXT)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                self.wfile.write(f"Content-Length: {2 * len(payload)}\r\n\r\n".encode() + payload)
                self._drop()

            def _hang(self):
                server.closing.wait(120)
                self._drop()

            def _trickle(self, body_only=False):
                payload = chat(OK_TEXT)
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                )
                reply, from_byte = head + payload, len(head) if body_only else 0
                self.wfile.write(reply[:from_byte])
                for i in range(from_byte, len(reply)):
                    if server.closing.wait(server.trickle_seconds):
                        break
                    self.wfile.write(reply[i : i + 1])
                    self.wfile.flush()
                self._drop()

            def _huge_headers(self):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 100_000 + b"\r\n\r\n")
                self._drop()

        TRANSPORT = {
            "reset": Handler._reset,
            "close": Handler._drop,
            "nothttp": Handler._nothttp,
            "truncated": Handler._truncated,
            "hang": Handler._hang,
            "trickle": lambda handler: handler._trickle(body_only=True),
            "trickle_headers": Handler._trickle,
            "huge_headers": Handler._huge_headers,
        }
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        # a short poll: shutdown() waits up to one interval, and tests start and stop many servers
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1/chat/completions"

    def chaos_dealt(self, kind: str) -> int:
        """How many of the /chaos/ requests received so far got `kind` ("reset" or "hang")."""
        return sum(CHAOS.get(n % 10) == kind for n in range(1, self.hits["chaos"] + 1))

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
