#!/usr/bin/env python3
"""A small OpenAI-compatible chat completions server on loopback, for the runtime's `openai` backend tests.

It speaks the real streaming format: `POST /v1/chat/completions` with `"stream": true` answers
`text/event-stream`, chunked, `data: {"choices":[{"delta":{"content":"…"}}]}` lines and `data: [DONE]`.
What it does depends on the last user message:

  - anything          → the words "echo: <message>" one chunk each, then usage, then [DONE]
  - contains "split"  → the same, but every SSE line is cut in two writes, mid-JSON
  - contains "429"    → the first request of that text gets 429 (Retry-After: 0); the next one streams
  - contains "500"    → every request gets 500
  - contains "midway" → two chunks, then an error object, then the connection closes without [DONE]
  - contains "slow"   → a chunk every 100 ms, 100 of them (for cancellation)

It prints its port on stdout once listening, and logs one line per event on stderr: `request <n> <text>`,
`status <code>`, `done`, `client gone` (the client closed the connection mid-stream: what cancellation looks
like from here). Loopback only; stops on SIGTERM.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = {}
count = 0
lock = threading.Lock()


def log(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        global count
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        text = body["messages"][-1]["content"]
        with lock:
            count += 1
            n = count
            attempt = seen.get(text, 0)
            seen[text] = attempt + 1
        log(f"request {n} {text}")
        if ("429" in text and attempt == 0) or "500" in text:
            code = 429 if "429" in text else 500
            log(f"status {code}")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "0")
            payload = json.dumps({"error": {"message": "try later", "type": "rate_limit"}}).encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        words = ("echo: " + text).split(" ")
        if "slow" in text:
            words = [f"w{i}" for i in range(100)]
        try:
            for i, w in enumerate(words):
                if "midway" in text and i == 2:
                    self.chunk(b'data: {"error":{"message":"the model crashed","type":"server_error"}}\n\n')
                    log("midway error")
                    self.wfile.write(b"0\r\n\r\n")  # ends the body without [DONE]
                    self.close_connection = True
                    return
                content = w + (" " if i < len(words) - 1 else "")
                line = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}).encode() + b"\n\n"
                if "split" in text:
                    half = len(line) // 2
                    self.chunk(line[:half])
                    time.sleep(0.01)
                    self.chunk(line[half:])
                else:
                    self.chunk(line)
                if "slow" in text:
                    time.sleep(0.1)
            usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}}
            self.chunk(b"data: " + json.dumps(usage).encode() + b"\n\n")
            self.chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            log("done")
        except (BrokenPipeError, ConnectionResetError):
            log("client gone")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
