"""The ASGI application: routes, middleware, error answers, and the engines' lifetime.

    backend = Backend([ocr], ServerConfig(api_key="..."))
    app = create_app(backend)       # serve with uvicorn (see `server.run_server`)

Starlette (the ASGI toolkit FastAPI is built on) rather than FastAPI: the request bodies are
validated by hand anyway, to answer in OpenAI's error shape with the field at fault, so
FastAPI's pydantic layer would only add weight.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .backend import Backend
from .chat import chat_completions
from .errors import ServingError
from .http import error_response
from .middleware import ApiKeyGuard, BodyLimit, RequestCounter
from .ocr_api import ocr

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


async def health(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = {"status": "ok" if backend.healthy else ("draining" if backend.draining else "unhealthy"),
            "engines": len(backend.workers), "in_flight": backend.in_flight}
    return JSONResponse(body, status_code=200 if backend.healthy else 503)


async def models(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    return JSONResponse({"object": "list", "data": [{
        "id": backend.config.model_name, "object": "model", "created": int(backend.started_at),
        "owned_by": "deepseek-ocr", "max_model_len": backend.context}]})


async def metrics(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    text = backend.metrics.render(in_flight=backend.in_flight, capacity=backend.capacity,
                                  preparing=backend.preparing, workers=backend.workers)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def _serving_error(request: Request, exc: ServingError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse({"error": {"message": str(exc.detail), "type": kind, "param": None, "code": exc.status_code}},
                        status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log; the client learns only that it was our fault.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": {"message": "internal server error", "type": "server_error", "param": None,
                                   "code": 500}}, status_code=500)


def create_app(backend: Backend) -> Starlette:
    """The application over `backend`; the engines start with the app's lifespan and stop with
    it (cancelling what is still running)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        backend.start()
        logger.info("serving %s with %d engine(s)", backend.config.model_name, len(backend.workers))
        try:
            yield
        finally:
            started = time.perf_counter()
            backend.stop()
            logger.info("engines stopped in %.1f s", time.perf_counter() - started)

    config = backend.config
    middleware = [Middleware(RequestCounter, metrics=backend.metrics)]
    if config.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"]))
    middleware += [Middleware(ApiKeyGuard, api_key=config.api_key),
                   Middleware(BodyLimit, limit=config.max_body_bytes)]
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/ocr", ocr, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={ServingError: _serving_error, HTTPException: _http_error,
                                        Exception: _unexpected})
    app.state.backend = backend
    return app
