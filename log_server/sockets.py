"""The listening socket of a meterlog HTTP server (the log, the edge's demo origin, a witness).

Owns :func:`listen`. Bound before uvicorn starts, so a busy port is a clear error, and made
with ``IPPROTO_TCP`` as its protocol, not 0 as ``socket.create_server`` makes it: the
connections it accepts inherit the protocol, and asyncio turns Nagle's algorithm off
(``TCP_NODELAY``) only on sockets whose protocol says TCP. With Nagle on, an answer written
in two pieces (head, then body) on a keep-alive connection waited for the client's delayed
ACK: 40 ms per request, for a browser or any client that reuses its connection
(bench/portal.py found it on the log; bench/edge.py on the demo origin). Imports the
standard library only.
"""

from __future__ import annotations

import socket

__all__ = ["listen"]


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: any free port) and listening.

    Raises OSError when the address cannot be resolved or bound.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock
