#!/usr/bin/env python3
"""Opens N idle WebSocket connections to a server and reports its RSS per connection.

    scripts/idle-conns.py PORT N SERVER_PID [PATH]

PATH defaults to /sub/idle. The server's VmRSS is read from /proc before the first connection and one second
after the last 101. Needs `ulimit -n` above N. A stop-gap until `loadgen conns --server-pid` exists.
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS for pid %d" % pid)


def main():
    port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/sub/idle"
    req = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    before = rss_kib(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        socks.append(s)
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("connection closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit("upgrade refused: %r" % head[:80])
    time.sleep(1.0)
    after = rss_kib(pid)
    print(f"path={path} conns={n} rss_before={before}KiB rss_after={after}KiB "
          f"per_conn={(after - before) * 1024 / n:.0f}B")


if __name__ == "__main__":
    main()
