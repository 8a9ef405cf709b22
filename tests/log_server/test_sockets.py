"""The listening sockets of meterlog's servers (the log, the edge's demo origin; the witness
calls the same function) turn Nagle's algorithm off on every connection they accept.

asyncio sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP, and accepted sockets
inherit the listening socket's protocol; ``socket.create_server`` makes it 0. Without it a
keep-alive client waited 40 ms for each answer written in two pieces (head, then body)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from cli import edge_node
from log_server import cli as serve_cli
from log_server.sockets import listen

LISTENERS: dict[str, Callable[[str, int], socket.socket]] = {
    "log_server.sockets.listen": listen,
    "meterlog serve": serve_cli._listen,
    "meterlog edge serve-demo": edge_node._listen,
}


@pytest.mark.parametrize("name", sorted(LISTENERS))
def test_accepted_connections_are_tcp(name: str) -> None:
    listening = LISTENERS[name]("127.0.0.1", 0)
    with listening, socket.create_connection(listening.getsockname()[:2]):
        accepted, _ = listening.accept()
        with accepted:
            assert accepted.proto == socket.IPPROTO_TCP


@pytest.mark.parametrize("name", sorted(LISTENERS))
def test_the_server_side_of_a_connection_has_nagle_off(name: str) -> None:
    assert asyncio.run(_nodelay_of_an_asyncio_connection(LISTENERS[name])) != 0


def test_a_socket_without_the_protocol_keeps_nagle_on() -> None:
    """The control: what the servers did before, so the test above can fail."""

    def create_server(host: str, port: int) -> socket.socket:
        return socket.create_server((host, port))

    assert asyncio.run(_nodelay_of_an_asyncio_connection(create_server)) == 0


def test_a_busy_port_is_an_os_error() -> None:
    with listen("127.0.0.1", 0) as busy, pytest.raises(OSError):
        listen("127.0.0.1", busy.getsockname()[1]).close()


async def _nodelay_of_an_asyncio_connection(make: Callable[[str, int], socket.socket]) -> int:
    """TCP_NODELAY on the server side of a connection asyncio accepted on ``make``'s socket."""
    listening = make("127.0.0.1", 0)
    found: list[int] = []

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(connected, sock=listening)
    async with server:
        _, writer = await asyncio.open_connection(*listening.getsockname()[:2])
        for _ in range(200):
            if found:
                break
            await asyncio.sleep(0.01)
        writer.close()
    return found[0]
