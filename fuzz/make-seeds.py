#!/usr/bin/env python3
"""Writes the fuzzer's seed corpus: valid frames of every type, encoded from docs/protocol.md alone
(an independent encoder, so the corpus also checks that the document and the Swift codec agree).
Each file starts with the two control bytes the fuzz target reads (payload limit, chunking)."""
import os, struct

def s(x):  # u16 length + UTF-8
    b = x.encode()
    return struct.pack(">H", len(b)) + b

def frame(t, stream, payload, flags=0):
    return struct.pack(">IBBHI", len(payload), t, flags, 0, stream) + payload

HELLO, WELCOME, OPEN, DATA, CREDIT, CLOSE, ERROR, PING, PONG, SUB, UNSUB, PUB, GOAWAY, DROPPED = range(1, 15)
frames = {
    "hello": frame(HELLO, 0, struct.pack(">HBBII", 1, 1, 0, 65536, 1000) + s("playground") + s("i-1") + s("dev-instance-token")),
    "hello-loop": frame(HELLO, 0, struct.pack(">HBBII", 1, 2, 0, 65536, 0) + s("") + s("rt-1") + s("dev-runtime-token-0001") + struct.pack(">H", 1)),
    "welcome-loops": frame(WELCOME, 0, struct.pack(">HHIIIII", 1, 0, 65536, 1000, 262144, 1024, 9) + s("soulfra") + struct.pack(">HH", 1, 2)),
    "welcome": frame(WELCOME, 0, struct.pack(">HHIIIII", 1, 0, 65536, 1000, 262144, 1024, 7) + s("soulfra")),
    "open": frame(OPEN, 1, struct.pack(">BBHQ", 1, 0, 0, 42) + s("playground") + s("session-1") + s("cal")),
    "data": frame(DATA, 1, b"hello, world"),
    "data-end": frame(DATA, 3, b"", flags=1),
    "data-more": frame(DATA, 5, b"part one of a message", flags=2) + frame(DATA, 5, b" and its end", flags=0),
    "data-binary": frame(DATA, 7, bytes(range(32)), flags=4 | 2) + frame(DATA, 7, b"\x00\xff", flags=4 | 1),
    "open-window": frame(OPEN, 11, struct.pack(">BBHQ", 1, 0, 0, 42) + s("playground") + s("s") + s("message") + struct.pack(">II", 8192, 85)),
    "close-timeout": frame(CLOSE, 11, struct.pack(">H", 18) + s("no answer within the request deadline")),
    "credit": frame(CREDIT, 1, struct.pack(">II", 65536, 64)),
    "close": frame(CLOSE, 1, struct.pack(">H", 0) + s("done")),
    "error": frame(ERROR, 5, struct.pack(">H", 6) + s("no instance of world \"playground\" is attached")),
    "error-link": frame(ERROR, 0, struct.pack(">H", 3) + s("token not valid")),
    "ping": frame(PING, 0, struct.pack(">Q", 0xDEADBEEF)),
    "pong": frame(PONG, 0, struct.pack(">Q", 1)),
    "subscribe": frame(SUB, 9, struct.pack(">BB", 1, 0) + s("arena") + s("final")),
    "unsubscribe": frame(UNSUB, 9, b""),
    "publish": frame(PUB, 0, s("arena") + s("final") + b"\xab" * 64),
    "goaway": frame(GOAWAY, 0, struct.pack(">IH", 11, 11) + s("broker shutting down")),
    "dropped": frame(DROPPED, 9, struct.pack(">I", 17)),
}
out = os.path.join(os.path.dirname(__file__), "corpus")
os.makedirs(out, exist_ok=True)
for name, f in frames.items():
    open(os.path.join(out, name), "wb").write(b"\x03\x00" + f)
open(os.path.join(out, "all-bytewise"), "wb").write(b"\x03\x00" + b"".join(frames.values()))
open(os.path.join(out, "all-chunked"), "wb").write(b"\x03\x07" + b"".join(frames.values()))
open(os.path.join(out, "oversize"), "wb").write(b"\x00\x00" + frame(DATA, 1, b"x" * 40))
open(os.path.join(out, "data-more-end"), "wb").write(b"\x03\x00" + frame(DATA, 9, b"x", flags=3))  # invalid: MORE with END
open(os.path.join(out, "oversize-then-more"), "wb").write(b"\x00\x03" + frame(DATA, 1, b"x" * 40) + frame(PING, 0, struct.pack(">Q", 5)) + frame(DATA, 3, b"ok"))
print(f"wrote {len(frames) + 3} seeds to {out}")
