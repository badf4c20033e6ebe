"""The HTTP server (`deepseek-ocr serve`): an OpenAI-compatible chat endpoint, a page/PDF OCR
endpoint and a web page, on the continuous-batching engine.

    from deepseek_ocr import DeepseekOCR
    from deepseek_ocr.serving import Backend, ServerConfig, create_app, run_server

    ocr = DeepseekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR")
    backend = Backend([ocr], ServerConfig())
    run_server(create_app(backend), backend, host="127.0.0.1", port=8000)

Layers: `worker` (one thread per engine), `backend` (engines, preparation pool, admission),
`chat` / `chat_request` and `ocr_api` / `documents` (the endpoints), `app` (routes and
middleware), `server` (uvicorn), `background` (a server on a thread of this process). Needs the `serve` extra (starlette, uvicorn, python-multipart).
"""
from .app import create_app
from .backend import Backend
from .background import BackgroundServer
from .config import API_KEY_ENV, ServerConfig
from .errors import ServingError
from .server import make_server, run_server

__all__ = ["Backend", "BackgroundServer", "ServerConfig", "API_KEY_ENV", "ServingError", "create_app", "make_server", "run_server"]
