"""A server on a background thread of this process, on a free loopback port: for tests,
notebooks and programs that embed the server next to their own work.

    with BackgroundServer(Backend([ocr], ServerConfig())) as server:
        httpx.get(server.url + "/health")
"""
from __future__ import annotations

import socket
import threading
import time

from .app import create_app
from .backend import Backend
from .server import make_server


class BackgroundServer:
    """Start on `__enter__` (or `start()`), stop on `__exit__` (or `stop()`).

    Args:
        backend: what to serve (its engines start and stop with the server).
        host: the address to listen on (a free port is chosen there).
        shutdown_timeout: seconds requests in flight get when stopping.
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", shutdown_timeout: float = 10.0):
        self.backend = backend
        self.app = create_app(backend)
        # Bound here, so the port is known (and held) before the server thread runs.
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self.server = make_server(self.app, backend, host=host, port=self.port, shutdown_timeout=shutdown_timeout,
                                  log_level="warning")
        self._thread = threading.Thread(target=self._run, name="deepseek-ocr-server", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as err:  # noqa: BLE001 - reported to the thread that waits in start()
            self._error = err

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down as on SIGTERM: requests in flight finish (up to the shutdown timeout)."""
        self.backend.draining = True
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
