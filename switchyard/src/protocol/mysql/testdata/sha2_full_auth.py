#!/usr/bin/env python3
"""A scripted caching_sha2_password server used to capture full authentication over
plaintext: the files `NAME.client.bin` / `NAME.server.bin` in this directory.

Usage: sha2_full_auth.py LISTEN_PORT NAME
Accepts one connection on 127.0.0.1:LISTEN_PORT and greets it as a MySQL 8 server whose
default plugin is caching_sha2_password, with the fixed scramble below. Whatever the
fast-path answer, it asks for full authentication (AuthMoreData 0x04, what a server does
when the user is not in its cache), sends the RSA public key of `sha2_rsa_test_key.pem`
(a key made for these captures only) when the client asks for it (0x02), takes the
encrypted password and answers OK, then OK to every command until COM_QUIT or close.
What each side sent is written raw, in order.
"""
import socket
import struct
import subprocess
import sys
from pathlib import Path

SCRAMBLE = b"0123456789abcdefghij"
HERE = Path(__file__).resolve().parent
PUBLIC_KEY = subprocess.run(
    ["openssl", "rsa", "-in", str(HERE / "sha2_rsa_test_key.pem"), "-pubout"],
    check=True, capture_output=True).stdout

listen_port, name = int(sys.argv[1]), sys.argv[2]
listener = socket.create_server(("127.0.0.1", listen_port))
conn, _ = listener.accept()
sent, received = bytearray(), bytearray()


def send(sequence, payload):
    data = struct.pack("<I", len(payload))[:3] + bytes([sequence]) + payload
    sent.extend(data)
    conn.sendall(data)


def read():
    head = b""
    while len(head) < 4:
        more = conn.recv(4 - len(head))
        if not more:
            return None, None
        head += more
    length = int.from_bytes(head[:3], "little")
    body = b""
    while len(body) < length:
        more = conn.recv(length - len(body))
        if not more:
            return None, None
        body += more
    received.extend(head + body)
    return head[3], body


# CLIENT_LONG_PASSWORD | FOUND_ROWS | LONG_FLAG | CONNECT_WITH_DB | PROTOCOL_41 |
# TRANSACTIONS | SECURE_CONNECTION | MULTI_STATEMENTS | MULTI_RESULTS | PLUGIN_AUTH |
# CONNECT_ATTRS | PLUGIN_AUTH_LENENC_CLIENT_DATA
capabilities = 0x1 | 0x2 | 0x4 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x10000 | 0x20000 \
    | 0x80000 | 0x100000 | 0x200000
greeting = (b"\x0a" + b"8.0.36-capture\x00" + struct.pack("<I", 7) + SCRAMBLE[:8] + b"\x00"
            + struct.pack("<H", capabilities & 0xFFFF) + b"\xff" + struct.pack("<H", 2)
            + struct.pack("<H", capabilities >> 16) + bytes([21]) + b"\x00" * 10
            + SCRAMBLE[8:] + b"\x00" + b"caching_sha2_password\x00")
send(0, greeting)
sequence, _login = read()
sequence += 1
send(sequence, b"\x01\x04")
sequence, answer = read()
if answer == b"\x02":
    send(sequence + 1, b"\x01" + PUBLIC_KEY)
    sequence, answer = read()
send(sequence + 1, b"\x00\x00\x00\x02\x00\x00\x00")
while True:
    sequence, command = read()
    if command is None or command[:1] == b"\x01":
        break
    send(sequence + 1, b"\x00\x00\x00\x02\x00\x00\x00")
conn.close()
(HERE / (name + ".client.bin")).write_bytes(received)
(HERE / (name + ".server.bin")).write_bytes(sent)
