import base64, os, socket, sys, json
addr, n = sys.argv[1], int(sys.argv[2])
host, port = addr.rsplit(":", 1)
s = socket.create_connection((host, int(port)))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf: buf += s.recv(4096)
out = bytearray()
for i in range(n):
    p = json.dumps({"type":"subscribe","topic":f"m{i}"}).encode()
    out += bytes([0x81, 0x80 | 126]) + len(p).to_bytes(2, "big") + b"\0\0\0\0" + p if len(p) >= 126 else bytes([0x81, 0x80 | len(p)]) + b"\0\0\0\0" + p
s.sendall(out)
acks = buf.split(b"\r\n\r\n",1)[1].count(b'"ack"')
while acks < n:
    d = s.recv(1 << 20); acks += d.count(b'"ack"')
    if b'"error"' in d: print("error", d[:200]); break
print("acked", acks)
import time
while True:
    d = s.recv(1 << 20)
    if not d: break
