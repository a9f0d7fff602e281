#!/usr/bin/env python3
"""Cross-node publish rate through Redis: publish N messages on node A's /pub/TOPIC as fast as the socket takes
them, count deliveries on node B's /sub/TOPIC, report the rate between first and last delivery."""
import base64, os, socket, sys, threading, time

def upgrade(addr, path):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
    return s, buf.split(b"\r\n\r\n", 1)[1]

def main():
    a, b, topic, n, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    sub, rest = upgrade(b, f"/sub/{topic}")
    time.sleep(float(os.environ.get("SETTLE", "1.5")))  # let B's SUBSCRIBE reach Redis
    expected = n * (2 + size)
    got = len(rest)
    first = [None]
    def reader():
        nonlocal got
        sub.settimeout(20)
        while got < expected:
            chunk = sub.recv(1 << 20)
            if not chunk:
                break
            if first[0] is None:
                first[0] = time.monotonic()
            got += len(chunk)
    t = threading.Thread(target=reader)
    t.start()
    pub, _ = upgrade(a, f"/pub/{topic}")
    frame = bytes([0x82, 0x80 | size]) + b"\0\0\0\0" + b"x" * size
    batch = frame * 10000
    start = time.monotonic()
    for _ in range(n // 10000):
        pub.sendall(batch)
    sent = time.monotonic()
    try:
        t.join()
    except KeyboardInterrupt:
        pass
    end = time.monotonic()
    print(f"published {n} in {sent-start:.3f}s; delivered {got // (2 + size)} of {n} on B; "
          f"rate {got // (2 + size) / (end - start):.0f} msg/s (first publish to last delivery)")

main()
