"""Where a request's image comes from: a `data:` URL, or (only when the server allows it) an
http(s) URL fetched with a size cap and a time limit. Local paths and `file:` URLs are refused
whatever the settings: a server must never read its own disk on a client's say-so.
"""
from __future__ import annotations

import base64
import binascii
import re
import urllib.error
import urllib.parse
import urllib.request

from .config import ServerConfig
from .errors import InvalidRequestError, MalformedRequestError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_FETCH_SCHEMES = ("http", "https")
_MAX_REDIRECTS = 5


def decode_data_url(url: str, param: str) -> bytes:
    """The bytes of a base64 `data:` URL (`data:image/png;base64,....`)."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise MalformedRequestError("the data URL has no ',' before its data", param=param)
    meta = header[len("data:"):].split(";")
    if "base64" not in (m.strip().lower() for m in meta[1:]):
        raise MalformedRequestError("only base64 data URLs are accepted (data:<type>;base64,<data>)", param=param)
    # Line breaks and spaces appear in hand-made data URLs; anything else is an error.
    compact = "".join(payload.split())
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MalformedRequestError(f"the data URL's base64 is malformed: {err}", param=param) from None
    if not data:
        raise MalformedRequestError("the data URL holds no data", param=param)
    return data


class ImageRef:
    """An image named by a request, checked for its scheme; `read()` gets its bytes."""

    def __init__(self, url: str, param: str = "image_url"):
        self.url, self.param = url, param

    @property
    def is_data(self) -> bool:
        return self.url[:5].lower() == "data:"

    def read(self, config: ServerConfig) -> bytes:
        """The image's bytes (blocking: base64 decoding of a large data URL, or a fetch; run it
        in the preparation pool, off the event loop)."""
        if self.is_data:
            return decode_data_url(self.url, self.param)
        return fetch(self.url, config, self.param)


def image_ref(url: object, config: ServerConfig, param: str) -> ImageRef:
    """Check an `image_url`'s scheme; refuses local files outright, and http(s) unless allowed."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequestError("image_url must hold a non-empty url string", param=param)
    url = url.strip()
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme == "data":
        return ImageRef(url, param=param)
    if scheme in _FETCH_SCHEMES:
        if not config.allow_fetch:
            raise InvalidRequestError("this server does not fetch http(s) images (start it with --allow-fetch); "
                                      "send the image as a data: URL", param=param)
        return ImageRef(url, param=param)
    if scheme == "file" or not scheme or len(scheme) == 1:  # a path, or a Windows drive letter
        raise InvalidRequestError("image_url names a local file; the server never reads local files: send the "
                                  "image as a data: URL", param=param)
    raise InvalidRequestError(f"image_url scheme {scheme!r} is not supported; use a data: URL", param=param)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most a few redirects, and only to http(s): a redirect to `file:` or `ftp:`
    would otherwise turn a fetch into a read of something else."""

    max_redirections = _MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _FETCH_SCHEMES:
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http(s) URL refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # Built from the handlers needed only: no file:, ftp: or data: handlers at all.
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(), _HttpOnlyRedirects(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.HTTPDefaultErrorHandler()):
        opener.add_handler(handler)
    return opener


def fetch(url: str, config: ServerConfig, param: str = "image_url") -> bytes:
    """GET `url` (blocking; run it in the preparation pool), at most `config.fetch_max_bytes`
    within `config.fetch_timeout` seconds per network operation."""
    request = urllib.request.Request(url, headers={"User-Agent": "deepseek-ocr-server"})
    limit = config.fetch_max_bytes
    try:
        with _opener().open(request, timeout=config.fetch_timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise InvalidRequestError(f"the image at the URL has {declared} bytes, over the limit of {limit}",
                                          param=param)
            data = response.read(limit + 1)
    except urllib.error.HTTPError as err:
        raise InvalidRequestError(f"fetching the image failed: HTTP {err.code} {err.reason}", param=param) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InvalidRequestError(f"fetching the image failed: {reason}", param=param) from None
    if len(data) > limit:
        raise InvalidRequestError(f"the image at the URL is over the limit of {limit} bytes", param=param)
    if not data:
        raise InvalidRequestError("the image at the URL is empty", param=param)
    return data
