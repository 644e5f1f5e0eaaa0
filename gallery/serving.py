"""The socket `faramir serve` listens on.

It is bound before uvicorn starts, so that the URL printed is the one listening (port 0 picks a
free one). asyncio switches Nagle's algorithm off (TCP_NODELAY) only on connections whose socket
says it is TCP (`proto == IPPROTO_TCP`); `socket.create_server` makes sockets with proto 0, so
without the explicit protocol every response on a kept-alive connection, written by uvicorn as
a header and then a body, waited about 40 ms for the client's delayed ACK. Here the listening
socket is made as TCP and has TCP_NODELAY itself (Linux hands it on to accepted connections).
"""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, *, nodelay: bool = True) -> socket.socket:
    """A socket bound to `host`:`port` and listening; with `nodelay`, its connections send each
    write at once. Raises OSError when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP if nodelay else 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock
