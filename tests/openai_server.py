"""A tiny OpenAI-compatible chat-completions server in a thread, for tests: it records every request, can
fail the first N with a status (429, 500) or stall them past the client's timeout, and answers through a
function of the request (default: "Yes", with logprobs when asked)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def default_answer(request: dict[str, Any]) -> tuple[str, dict[str, float]]:
    return "Yes", {"Yes": 0.6, "No": 0.2}


@dataclass
class FakeOpenAI:
    answer: Callable[[dict[str, Any]], tuple[str, dict[str, float]]] = default_answer
    fail_first: int = 0  # fail this many requests with fail_status
    fail_status: int = 429
    stall_first: int = 0  # hold this many requests for stall_s before answering
    stall_s: float = 0.0
    delay_s: float = 0.0  # every request takes this long (to see concurrency)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            number = len(self.requests)
            self.requests.append(body)
            self.headers.append(headers)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if number < self.stall_first:
                time.sleep(self.stall_s)
            time.sleep(self.delay_s)
            if number < self.fail_first:
                return self.fail_status, {"error": {"message": "slow down"}}
            text, probabilities = self.answer(body)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}
            if body.get("logprobs"):
                top = [{"token": t, "logprob": math.log(p)} for t, p in probabilities.items()]
                choice["logprobs"] = {"content": [{"token": text, "logprob": top[0]["logprob"], "top_logprobs": top}]}
            return 200, {"id": f"c{number}", "object": "chat.completion", "model": body.get("model"),
                         "choices": [choice]}
        finally:
            with self._lock:
                self._in_flight -= 1


@contextmanager
def serve(fake: FakeOpenAI):
    """Run `fake` on 127.0.0.1 (a free port); yields the base_url ("http://127.0.0.1:PORT/v1")."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, reply = fake.handle(body, dict(self.headers))
            data = json.dumps(reply).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
