"""Free ports for services started on this machine (tests, `meshserve up`)."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999): a port picked here cannot be taken in the
# meantime by some process's outgoing connection, which ephemeral ports can.
_SERVICE_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the service binds it a moment later)."""
    for port in random.sample(_SERVICE_PORTS, 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(
        f"no free port between {_SERVICE_PORTS.start} and {_SERVICE_PORTS.stop} on {host}"
    )
