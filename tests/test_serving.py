"""`faramir serve`'s listening socket: its connections send each write at once (TCP_NODELAY).
Without it, uvicorn's header and body writes met Nagle's algorithm and the client's delayed ACK,
and every response on a kept-alive connection waited about 40 ms."""

from __future__ import annotations

import socket

from faramir.gallery.serving import listening_socket


def test_accepted_connections_have_nagle_off_and_say_they_are_tcp():
    server = listening_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert accepted.proto == socket.IPPROTO_TCP  # so asyncio sets TCP_NODELAY on it too
    finally:
        server.close()


def test_the_old_way_left_nagle_on():  # what `socket.create_server` gave: the 40 ms a response
    server = listening_socket("127.0.0.1", 0, nodelay=False)
    try:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0 and accepted.proto == 0
    finally:
        server.close()
