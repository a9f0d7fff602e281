#!/usr/bin/env python3
"""Writes the hand-written seeds of every fuzz target into fuzz/corpus/<target>/seed-*.

Run from anywhere: `python3 fuzz/make_seeds.py`. Idempotent (same names, same bytes). Input formats are
documented per target in fuzz/src/entry.rs; the constants below must match it (secret, NOW_UNIX, masks).
"""
import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SECRET = b"test-secret-0123456789-abcdefghijklmnop"
NOW = 1_800_000_000
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP = {"cont": 0, "text": 1, "bin": 2, "close": 8, "ping": 9, "pong": 10}


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(claims):
    signing = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(SECRET, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


GOOD = token({"sub": "alice", "exp": NOW + 600, "subscribe": ["news", "user.alice.*"], "publish": "chat"})
EXPIRED = token({"sub": "bob", "exp": NOW - 600})


def frame(opcode, payload=b"", fin=True, mask=MASK, rsv=0):
    # opcode: a name from OP, or a whole first byte given as an int (for unknown opcodes).
    first = (0x80 if fin else 0) | (rsv << 4) | OP[opcode] if isinstance(opcode, str) else opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, mbit | n])
    elif n < 65536:
        head = bytes([first, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, mbit | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


def close_body(code, reason=b""):
    return struct.pack(">H", code) + reason


UPGRADE = (
    "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def handshake_request():
    t = "handshake_request"
    write(t, "rfc6455-upgrade", UPGRADE)
    write(t, "firefox-connection-list", UPGRADE.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"))
    write(t, "post-upgrade", UPGRADE.replace("GET /chat", "POST /chat"))
    write(t, "version-8", UPGRADE.replace("Version: 13", "Version: 8"))
    write(t, "http10", UPGRADE.replace("HTTP/1.1", "HTTP/1.0"))
    write(t, "repeated-key", UPGRADE.replace("Origin", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nOrigin"))
    write(t, "bad-key", UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="))
    write(t, "publish-with-body", "POST /publish/news HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello")
    write(t, "chunked", "POST /publish/news HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    write(t, "metrics", "GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    write(t, "partial", UPGRADE[:40])
    write(t, "many-headers", "GET / HTTP/1.1\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(70)) + "\r\n")
    write(t, "non-utf8-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xe9\r\n\r\n")


def codec_input(stream, flags=0, chunks=b""):
    return bytes([flags, len(chunks)]) + chunks + stream


def codec():
    t = "codec"
    write(t, "text", codec_input(frame("text", b"hello")))
    write(t, "binary-16bit-len", codec_input(frame("bin", bytes(range(256)) * 2), chunks=b"\x07\x40"))
    write(t, "ping-pong-close", codec_input(frame("ping", b"p") + frame("pong", b"q") + frame("close", close_body(1000, b"bye"))))
    write(
        t,
        "fragmented-text-with-ping",
        codec_input(
            frame("text", "κό".encode(), fin=False) + frame("ping", b"x") + frame("cont", "σμε".encode(), fin=False)
            + frame("cont", b"!", fin=True),
            chunks=b"\x01\x03\x05",
        ),
    )
    write(t, "fragmented-binary-client-role", codec_input(frame("bin", b"ab", fin=False, mask=None) + frame("cont", b"cd", mask=None), flags=1))
    write(t, "utf8-split-across-fragments", codec_input(frame("text", b"\xe2\x82", fin=False) + frame("cont", b"\xac")))
    write(t, "invalid-utf8", codec_input(frame("text", b"\xed\xa0\x80")))
    write(t, "too-large-frame", codec_input(frame("bin", b"z" * 100), flags=0))
    write(t, "too-large-message", codec_input(frame("bin", b"z" * 60, fin=False) + frame("cont", b"z" * 60, fin=False) * 4, flags=0))
    write(t, "64bit-len", codec_input(bytes([0x82, 0xFF]) + struct.pack(">Q", 70000) + MASK + b"\0" * 32, flags=6))
    write(t, "64bit-len-msb", codec_input(bytes([0x82, 0xFF]) + b"\x80" + b"\0" * 7 + MASK, flags=6))
    write(t, "unmasked-to-server", codec_input(frame("text", b"hi", mask=None)))
    write(t, "rsv-bits", codec_input(frame("text", b"hi", rsv=4)))
    write(t, "unknown-opcode", codec_input(frame(0x83, b"")))
    write(t, "close-bad-code", codec_input(frame("close", close_body(1005))))
    write(t, "close-one-byte", codec_input(frame("close", b"\x03")))
    write(t, "continuation-without-start", codec_input(frame("cont", b"x")))
    write(t, "control-too-long", codec_input(frame("ping", b"p" * 126)))


def control():
    t = "control"
    for name, text in [
        ("subscribe", '{"type":"subscribe","topic":"news","id":1}'),
        ("unsubscribe", '{"type":"unsubscribe","topic":"news","id":"a"}'),
        ("publish", '{"type":"publish","topic":"chat","data":{"x":[1,2.5e3,null,true,"\\u00e9"]},"id":{"k":2}}'),
        ("publish-per-message-token", '{"type":"publish","topic":"chat","data":"hi","token":"' + GOOD + '"}'),
        ("auth", '{"type":"auth","token":"' + GOOD + '","id":null}'),
        ("auth-missing-token", '{"type":"auth","id":3}'),
        ("unknown-type", '{"type":"frobnicate","id":4}'),
        ("missing-topic", '{"type":"subscribe"}'),
        ("wrong-shape", '{"type":"subscribe","topic":5,"id":[1]}'),
        ("array", '["subscribe","news"]'),
        ("not-json", '{"type":'),
        ("big-number", '{"type":"publish","topic":"t","data":1e400,"id":1e999}'),
    ]:
        write(t, name, text)
    write(t, "not-utf8", b'{"type":"subscribe","topic":"\xff"}')


def auth():
    t = "auth"
    carriers = {
        "authorization": f"Authorization: Bearer {GOOD}\r\n",
        "x-auth-token": f"X-Auth-Token: {GOOD}\r\n",
        "cookie": f"Cookie: a=b; herald_token={GOOD}\r\nOrigin: https://ok.example\r\n",
        "subprotocol": f"Sec-WebSocket-Protocol: bearer, {GOOD}\r\n",
        "expired": f"Authorization: Bearer {EXPIRED}\r\n",
        "none": "",
    }
    for name, header in carriers.items():
        head = UPGRADE.replace("Origin: http://example.com\r\n", "").replace("Sec-WebSocket-Protocol: chat, superchat\r\n", "")
        head = head.replace("\r\n\r\n", "\r\n" + header + "\r\n")
        write(t, "carrier-" + name, bytes([2]) + head.encode())
    q = UPGRADE.replace("/chat?room=1", f"/ws?token={GOOD}")
    write(t, "carrier-query", bytes([6]) + q.encode())
    for name, claims in [
        ("valid", {"sub": "alice", "exp": NOW + 600, "subscribe": ["news"], "publish": "chat"}),
        ("expired", {"exp": NOW - 1}),
        ("not-yet-valid", {"exp": NOW + 600, "nbf": NOW + 100}),
        ("no-exp", {"sub": "x"}),
        ("aud-list", {"exp": NOW + 10, "aud": ["a", "b"], "iss": "me"}),
        ("exp-max", {"exp": 18446744073709551615}),
    ]:
        write(t, "claims-" + name, bytes([1]) + json.dumps(claims).encode())
    write(t, "claims-not-json", bytes([9]) + b"{nope")
    write(t, "alg-none", bytes([2]) + UPGRADE.replace("\r\n\r\n", "\r\nAuthorization: Bearer eyJhbGciOiJub25lIn0.e30.\r\n\r\n").encode())


def negotiate_input(nonce, host, path, headers, response):
    out = bytes(nonce) + bytes([len(host)]) + host + bytes([len(path)]) + path
    for kind, value in headers:
        out += bytes([kind, len(value)]) + value
    return out + b"\xff" + response


def response_101(nonce, protocol=None):
    key = base64.b64encode(bytes(nonce))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    r = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
    if protocol:
        r += b"Sec-WebSocket-Protocol: " + protocol + b"\r\n"
    return r + b"\r\n\x81\x02hi"


def negotiate():
    t = "negotiate"
    n = list(range(16))
    write(t, "plain", negotiate_input(n, b"localhost", b"echo", [], response_101(n)))
    write(t, "subprotocols", negotiate_input(n, b"h", b"ws", [(0, b"chat, superchat")], response_101(n, b"chat")))
    write(t, "extensions", negotiate_input(n, b"h", b"ws", [(1, b"permessage-deflate; client_max_window_bits")], response_101(n)))
    bearer = b"bearer, " + GOOD.encode()
    assert len(bearer) < 256, "a header value holds at most 255 bytes"
    write(t, "bearer-subprotocol", negotiate_input(n, b"h", b"ws", [(0, bearer)], response_101(n, b"bearer")))
    write(t, "bearer-subprotocol-bad-token", negotiate_input(n, b"h", b"ws", [(0, b"bearer, x.y.z")], response_101(n)))
    write(t, "origin-and-custom", negotiate_input(n, b"example.com", b"sub", [(2, b"https://ok.example"), (3, b"Trace")], b"HTTP/1.1 403 Forbidden\r\n\r\n"))
    write(t, "wrong-accept", negotiate_input(n, b"h", b"p", [], response_101([1] * 16)))


def conn_ops():
    t = "conn"

    def raw(b):
        out = b""
        for i in range(0, len(b), 255):
            part = b[i:i + 255]
            out += bytes([0, len(part)]) + part
        return out

    def cframe(opcode, payload=b"", fin=True):
        hdr = ["cont", "text", "bin", "close", "ping", "pong"].index(opcode)
        hdr |= 0x80 if fin else 0
        if len(payload) > 255:
            return bytes([1, hdr | 0x40]) + struct.pack(">H", len(payload)) + payload
        return bytes([1, hdr, len(payload)]) + payload

    step = lambda n: bytes([2, n])
    send = lambda p: bytes([3, len(p)]) + p
    close = lambda idx, reason: bytes([4, idx, len(reason)]) + reason
    drain = bytes([5, 0])
    limits = bytes([6])
    write(t, "echo-and-ping", cframe("text", b"hello") + send(b"hello") + cframe("ping", b"p") + drain + send(b"x"))
    write(t, "peer-close", cframe("close", close_body(1000, b"bye")) + drain + send(b"late") + cframe("text", b"after"))
    write(t, "peer-close-private-code", cframe("close", close_body(4999)) + drain)
    write(t, "peer-close-empty", cframe("close") + drain)
    write(t, "we-close-then-peer", close(4, b"unauthorized") + drain + cframe("text", b"discarded") + cframe("close", close_body(4401)) + step(250) + drain)
    write(t, "crossing-closes", close(0, b"bye") + cframe("close", close_body(1001)) + drain)
    write(t, "idle-timeout", step(210) + drain + step(255) + drain)
    write(t, "ping-interval", step(220) + drain + cframe("pong") + step(220) + drain)
    write(t, "fragments-and-pings", cframe("text", b"ab", fin=False) + cframe("ping", b"1") + cframe("ping", b"2") + bytes([5, 1]) + cframe("cont", b"cd") + drain)
    write(t, "too-big", cframe("bin", b"z" * 5000) + drain)
    write(t, "preauth-limits", limits + cframe("bin", b"z" * 300) + drain)
    write(t, "protocol-error", raw(frame("text", b"x", mask=None)) + drain)
    write(t, "bad-utf8", cframe("text", b"\xc3") + drain)
    write(t, "raw-split", raw(frame("text", b"hello")[:3]) + step(1) + raw(frame("text", b"hello")[3:]) + drain)


if __name__ == "__main__":
    handshake_request()
    codec()
    control()
    auth()
    negotiate()
    conn_ops()
