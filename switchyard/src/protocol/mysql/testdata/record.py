#!/usr/bin/env python3
"""Recording relay used to capture the files in this directory.

Usage: record.py LISTEN_PORT SERVER_PORT NAME
Accepts one connection on 127.0.0.1:LISTEN_PORT, relays it to 127.0.0.1:SERVER_PORT and
writes what each side sent to NAME.client.bin and NAME.server.bin (raw packets, in order).
"""
import selectors
import socket
import sys

listen_port, server_port, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
listener = socket.create_server(("127.0.0.1", listen_port))
client, _ = listener.accept()
server = socket.create_connection(("127.0.0.1", server_port))
recorded = {client: bytearray(), server: bytearray()}
peer = {client: server, server: client}
selector = selectors.DefaultSelector()
for sock in (client, server):
    selector.register(sock, selectors.EVENT_READ)
open_socks = 2
while open_socks:
    for key, _ in selector.select():
        data = key.fileobj.recv(65536)
        if not data:
            selector.unregister(key.fileobj)
            peer[key.fileobj].shutdown(socket.SHUT_WR)
            open_socks -= 1
            continue
        recorded[key.fileobj] += data
        peer[key.fileobj].sendall(data)
with open(name + ".client.bin", "wb") as f:
    f.write(recorded[client])
with open(name + ".server.bin", "wb") as f:
    f.write(recorded[server])
