"""Loopback ports: both servers listen on HOST only."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"
ADDRESS_IN_USE = "address already in use"  # in a server's log when it lost the race for its port


def free_port() -> int:
    """A port nobody listens on now (it may be taken before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Could a server listen on `port`?"""
    # Both servers set SO_REUSEADDR, so a port with connections in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen()
        except OSError:
            return False
    return True


def accepts_tcp(port: int) -> bool:
    """Does something accept connections on `port`?"""
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False
