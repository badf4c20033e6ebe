"""Running the application under uvicorn, with a graceful shutdown.

On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the requests in flight
to finish, up to `shutdown_timeout` seconds; the backend refuses new work meanwhile (503), and
then the requests still running are cancelled (their streams end, their engine slots are freed)
before the engines stop and the process exits.
"""
from __future__ import annotations

import logging
import socket
import sys

import uvicorn

from ..engine.gil import SWITCH_INTERVAL_S
from .backend import Backend

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the backend to drain as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, backend: Backend):
        super().__init__(config)
        self.backend = backend

    def handle_exit(self, sig, frame) -> None:
        if not self.backend.draining:
            logger.info("shutting down: finishing the %d request(s) in flight", self.backend.in_flight)
        self.backend.draining = True
        super().handle_exit(sig, frame)


def make_server(app, backend: Backend, *, host: str = "127.0.0.1", port: int = 8000,
                shutdown_timeout: float = 30.0, log_level: str = "info", access_log: bool = False) -> _Server:
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level,
                            access_log=access_log, timeout_graceful_shutdown=int(max(1, shutdown_timeout)),
                            timeout_keep_alive=30)
    return _Server(config, backend)


def run_server(app, backend: Backend, *, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0,
               log_level: str = "info", access_log: bool = False, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `server.should_exit`); blocks."""
    # The engine thread, the event loop and the preparing threads share the GIL: short turns
    # for the serving process's whole life (see engine/gil.py).
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    server = make_server(app, backend, host=host, port=port, shutdown_timeout=shutdown_timeout,
                         log_level=log_level, access_log=access_log)
    server.run(sockets=[sock] if sock is not None else None)
