#!/usr/bin/env python3
"""Latency Redis adds: publish RATE msgs/s for SECONDS on node A's /pub/TOPIC, each carrying its send time;
one /sub/TOPIC subscriber on A (same node) and one on B (across Redis) report p50/p99 of receive - send.
Usage: cluster-latency.py A_ADDR B_ADDR TOPIC RATE SECONDS"""
import base64, os, socket, struct, sys, threading, time

def upgrade(addr, path):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    return s, buf.split(b"\r\n\r\n", 1)[1]

def reader(sock, rest, n, out):
    buf = bytearray(rest)
    got = 0
    sock.settimeout(10)
    while got < n:
        while len(buf) >= 10:  # frame: 0x82, 8, then 8 bytes of send time
            now = time.perf_counter_ns()
            (sent,) = struct.unpack(">q", bytes(buf[2:10]))
            out.append((now - sent) / 1000.0)
            del buf[:10]
            got += 1
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")

def main():
    a, b, topic, rate, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    n = int(rate * secs)
    same, cross = [], []
    sa, ra = upgrade(a, f"/sub/{topic}")
    sb, rb = upgrade(b, f"/sub/{topic}")
    time.sleep(1.5)
    threads = [threading.Thread(target=reader, args=(sa, ra, n, same)), threading.Thread(target=reader, args=(sb, rb, n, cross))]
    for t in threads:
        t.start()
    pub, _ = upgrade(a, f"/pub/{topic}")
    start = time.perf_counter_ns()
    for i in range(n):
        due = start + i * 1_000_000_000 // rate
        while time.perf_counter_ns() < due:
            time.sleep(0.0002)
        payload = struct.pack(">q", time.perf_counter_ns())
        pub.sendall(bytes([0x82, 0x88, 0, 0, 0, 0]) + payload)
    for t in threads:
        t.join()
    print(f"same-node  n={len(same)} p50={pct(same, 0.5):.0f}us p99={pct(same, 0.99):.0f}us")
    print(f"cross-node n={len(cross)} p50={pct(cross, 0.5):.0f}us p99={pct(cross, 0.99):.0f}us")

main()
