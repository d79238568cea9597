"""Free ports for services started on this machine (tests, `meshserve up`)."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999): a port picked here cannot be taken in the
# meantime by some process's outgoing connection, which ephemeral ports can.
_SERVICE_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the service binds it a moment later)."""
    return free_port_run(1, host)


def free_port_run(n: int, host: str = "127.0.0.1") -> int:
    """The first of `n` consecutive ports nobody listens on right now (`meshserve up
    --metrics-port P` gives the gateway P and its backends the ports after it)."""
    for first in random.sample(range(_SERVICE_PORTS.start, _SERVICE_PORTS.stop - n + 1), 200):
        if all(_is_free(host, port) for port in range(first, first + n)):
            return first
    raise OSError(
        f"no {n} free ports in a row between {_SERVICE_PORTS.start} and "
        f"{_SERVICE_PORTS.stop} on {host}"
    )


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
