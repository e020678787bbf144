"""A cap on request bodies for the FastAPI app that Gradio builds (installed through launch(app_kwargs=...)).

Gradio limits file uploads (launch(max_file_size=...), checked while /gradio_api/upload streams the file to
disk) but reads every other request body whole into memory before looking at it: a 200 MB JSON body to
/gradio_api/call/diagnose was accepted, parsed, and held. Gradio 6.31 has no setting for that, so
`BodySizeLimit` refuses any body over MAX_BODY_BYTES with 413 and a message that says what to do:

- a declared Content-Length over the cap is refused before a byte of the body is read;
- a body without one (chunked) is counted as it arrives and refused as soon as it passes the cap;
- the upload route is exempt: Gradio checks it itself, file by file, on disk.

MAX_BODY_BYTES leaves room for the largest legitimate JSON body: an image sent inline as a base64 `data:`
URL of a file at the 10 MB upload limit (4/3 of it, 13.3 MiB) plus the rest of the request. Such a URL is
measured again, before it is decoded, by inference.images.decode_data_url.

    demo.launch(app_kwargs=request_limits.app_kwargs(), ...)
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.images import DEFAULT_MAX_BYTES

MAX_BODY_BYTES = 16 * 2**20
UPLOAD_ROUTES = ("/gradio_api/upload",)  # multipart, streamed to disk and capped by Gradio's max_file_size

BODY_TOO_LARGE = (
    "The request body is {size_mb:.1f} MB; this server accepts at most {limit_mb:g} MB outside file uploads. "
    "Send images as files (gradio_client's handle_file uploads them), not as base64 data URLs; "
    "files may be up to {file_mb:g} MB."
)
BODY_TOO_LARGE_STREAMED = (
    "The request body is over {limit_mb:g} MB; this server accepts at most {limit_mb:g} MB outside file uploads. "
    "Send images as files (gradio_client's handle_file uploads them), not as base64 data URLs; "
    "files may be up to {file_mb:g} MB."
)


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, except on `exempt` routes (path suffixes).

    A body within the cap is read here and handed on unchanged (the app would read it whole anyway).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, exempt: tuple[str, ...] = UPLOAD_ROUTES):
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = tuple(route.rstrip("/") for route in exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, BODY_TOO_LARGE, size_mb=declared / 2**20)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before the body was complete
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                del body
                await self._refuse(send, BODY_TOO_LARGE_STREAMED)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, send: Send, message: str, **sizes: float) -> None:
        detail = message.format(limit_mb=self.max_bytes / 2**20, file_mb=DEFAULT_MAX_BYTES / 2**20, **sizes)
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def app_kwargs(max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """`launch(app_kwargs=...)` that installs `BodySizeLimit` on the app Gradio builds."""
    return {"middleware": [Middleware(BodySizeLimit, max_bytes=max_bytes)]}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself; count the body instead
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body read already, then what the client sends next (disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
