"""The listening socket, bound before the model loads so that a busy port is one clear error.

uvicorn would bind only after its startup (which starts loading the model), and report a busy
port with its own log line and exit code; ``serve`` binds here first and hands the socket over.
"""

from __future__ import annotations

import errno
import socket

from ..errors import GemmaMTPError

__all__ = ["PortInUseError", "ListenError", "bind_socket"]

BACKLOG = 2048  # uvicorn's default


class ListenError(GemmaMTPError):
    """The server cannot listen on the address it was given."""


class PortInUseError(ListenError):
    """Another process already listens on the port."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (the first address ``host`` resolves to)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {host}: the address does not resolve ({exc.strerror}); pass --host with "
            "an IP address or a known host name"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts need no wait
        sock.bind(address)
        sock.listen(BACKLOG)  # a port bound but not listened on elsewhere fails here, not later
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use ({exc.strerror}); pass --port with a free port "
                "or stop the other server"
            ) from None
        raise ListenError(
            f"cannot listen on {host} port {port} ({exc.strerror}); pass --host and --port that this "
            "machine can bind"
        ) from None
    sock.set_inheritable(True)
    return sock
