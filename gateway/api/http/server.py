"""uvicorn serving the HTTP front inside the gateway's own asyncio loop, beside gRPC.

We bind the socket ourselves (a clear OSError when the port is taken, instead of uvicorn's
sys.exit) and drive uvicorn's startup / main loop / shutdown directly: `uvicorn.Server.serve`
would take SIGINT and SIGTERM from the gateway, whose own drain must run on them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

logger = logging.getLogger("meshserve.gateway.http")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0 picks a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot bind the HTTP port {host}:{port}: {exc}") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot bind the HTTP port {host}:{port}: the address is in use or not available"
        ) from exc
    return sock


class HttpServer:
    """One uvicorn server for `app`, started and stopped from a running event loop.

    Args:
        app: the ASGI app (gateway.api.http.app.build_app).
        host, port: where to listen; port 0 picks a free one (see `port` once started).
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._main_loop: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Binds and starts accepting; returns the bound port."""
        self._socket = bind_socket(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False, server_header=False
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._socket])
        self._server = server
        self._main_loop = asyncio.create_task(server.main_loop(), name="http-main-loop")
        return self.port

    async def stop(self, grace: float = 0.0) -> None:
        """Stops accepting; open requests (streams too) get `grace` seconds, then are cancelled."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.should_exit = True
        if self._main_loop is not None:
            await self._main_loop
        server.config.timeout_graceful_shutdown = max(grace, 0.1)
        await server.shutdown(sockets=[self._socket] if self._socket else None)
        logger.info("HTTP front on %s stopped", self.url)
