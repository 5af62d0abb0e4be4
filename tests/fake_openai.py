"""TEST HELPER: a small OpenAI-compatible chat-completions server on 127.0.0.1.

`reply(body) -> dict` decides each answer ({"content", "reasoning_content"?, "tokens"?,
"finish_reason"?} or {"status": code}, or {"raw": text, "content_type"?, "status"?} for a
body that is not a chat completion (an HTML page, cut JSON), with "sleep": seconds before
answering (a hanging endpoint)); every request is kept in `requests` with the
Authorization header it carried.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, reply):
        self.reply, self.requests = reply, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body,
                                       "authorization": self.headers.get("Authorization")})
                answer = owner.reply(body)
                time.sleep(answer.get("sleep", 0))
                status = answer.get("status", 200)
                if "raw" in answer:
                    self._send(status, answer["raw"].encode(),
                               answer.get("content_type", "text/html"))
                    return
                payload = {"error": {"message": "refused"}} if status != 200 else {
                    "id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": answer.get("finish_reason", "stop"),
                                 "message": {"role": "assistant", "content": answer["content"],
                                             **({"reasoning_content": answer["reasoning_content"]}
                                                if "reasoning_content" in answer else {})}}],
                    "usage": {"completion_tokens": answer.get("tokens", 7)}}
                self._send(status, json.dumps(payload).encode(), "application/json")

            def _send(self, status, data, content_type):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def judge_reply(body) -> dict:
    """A judge that says yes when the reference answer appears in the response's last line."""
    text = body["messages"][-1]["content"]
    gold = text.split("Reference answer: ", 1)[1].split("\n", 1)[0].strip()
    response = text.split("final answer):\n", 1)[1].rsplit("\n\nDoes the response", 1)[0]
    last = response.strip().splitlines()[-1] if response.strip() else ""
    return {"content": "yes" if gold and gold in last else "no", "tokens": 1}
