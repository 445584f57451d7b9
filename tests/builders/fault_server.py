"""A local OpenAI-compatible server that misbehaves on purpose, for the endpoint engine's tests.

Real HTTP on a free port (the standard library's threading server). Each distinct clip (told
apart by its user text) is dealt the next fault of `plan` the first time it arrives:
transient faults (429, 500, a hang, a reset connection, malformed JSON, an answer cut at the
budget) hit its first request only; `violate` (a schema-violating answer) and
`down` (503 forever) hit every request of it. Good answers follow the request's JSON schema
(the fake engine's `instance`), so the run's validation is real.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from annotator.engines.fake import instance

TRANSIENT = ("429", "500", "hang", "reset", "malformed", "truncate")
PERSISTENT = ("violate", "down")


class FaultServer:
    """`with FaultServer(plan) as server:` serves at `server.url` (ending in /v1)."""

    def __init__(self, plan: tuple[str | None, ...], model: str = "served-test",
                 hang_s: float = 4.0):
        self.plan, self.model, self.hang_s = plan, model, hang_s
        self.lock = threading.Lock()
        self.dealt: dict[str, str | None] = {}
        self.requests: Counter[str] = Counter()
        self.authorization: set[str] = set()
        self.bodies: list[dict] = []
        self.answered: dict[str, str] = {}
        """Each good answer's text: the clip key it was for."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.authorization.add(self.headers.get("Authorization", ""))
                fault = server.deal(body)
                if fault == "429":
                    self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
                elif fault in ("500", "down"):
                    self._send(503 if fault == "down" else 500, {"error": "server fault"})
                elif fault == "hang":
                    time.sleep(server.hang_s)
                    self._send(200, server.answer(body))
                elif fault == "reset":  # RST instead of an answer
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                elif fault == "malformed":
                    self._send_raw(200, b'{"choices": [{"message": ')
                elif fault == "truncate":  # the budget ended mid-answer
                    answer = server.answer(body)
                    choice = answer["choices"][0]
                    choice["finish_reason"] = "length"
                    choice["message"]["content"] = choice["message"]["content"][:20]
                    self._send(200, answer)
                elif fault == "violate":
                    answer = server.answer(body)
                    answer["choices"][0]["message"]["content"] = '{"summary": 7}'
                    self._send(200, answer)
                else:
                    self._send(200, server.answer(body))

            def _send(self, code, payload, headers=None):
                self._send_raw(code, json.dumps(payload).encode(), headers)

            def _send_raw(self, code, data, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def deal(self, body: dict) -> str | None:
        """The fault for this request: the clip's dealt fault where it still applies."""
        clip = _clip_of(body)
        with self.lock:
            self.bodies.append(body)
            self.requests[clip] += 1
            if clip not in self.dealt:
                self.dealt[clip] = self.plan[len(self.dealt) % len(self.plan)]
            fault = self.dealt[clip]
            first = self.requests[clip] == 1
        return fault if fault in PERSISTENT or first else None

    def answer(self, body: dict) -> dict:
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
        clip = _clip_of(body)
        text = json.dumps(instance(schema, int(clip[:12], 16))) if schema else \
            f"A short free thought about {clip[:8]}."
        with self.lock:
            self.answered[text] = clip
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": len(text.split()),
                          "total_tokens": 100 + len(text.split())}}

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that timed out and left (the hang fault) is expected, not news."""


def _clip_of(body: dict) -> str:
    """The clip a request is for: a hash of its first user turn's text."""
    user = next(m for m in body["messages"] if m["role"] == "user")
    content = user["content"]
    text = content if isinstance(content, str) else " ".join(
        p.get("text", "") for p in content if p.get("type") == "text")
    return hashlib.sha256(text.encode()).hexdigest()
