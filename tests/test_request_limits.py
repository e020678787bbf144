"""Request bodies are capped (inference.request_limits) and data URLs are measured before they are decoded.

Unit tests drive `BodySizeLimit` on a tiny ASGI app; the app tests send the requests that broke the
server (issue 12) to the real FairDx app, served in-process with its own launch arguments.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import math
import urllib.request

import pytest

from inference import diagnose_view, request_limits
from inference.images import DEFAULT_MAX_BYTES, TOO_MANY_BYTES
from inference.request_limits import BODY_TOO_LARGE, BODY_TOO_LARGE_STREAMED, MAX_BODY_BYTES, BodySizeLimit

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

LIMIT_MB, FILE_MB = MAX_BODY_BYTES / 2**20, DEFAULT_MAX_BYTES / 2**20
EXAMPLE = diagnose_view.EXAMPLES_DIR / "fundus-positive-1.png"


# ----------------------------------------------------------------------------- the middleware on its own
class Echo:
    """An ASGI app that answers with the body it read (and counts its calls)."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def drive(app, path: str, chunks: list[bytes], *, declared: int | None = None):
    """Send one request through `app`; returns (status, body, chunks the app/middleware asked for)."""
    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    pending, sent, asked = list(chunks), [], [0]

    async def receive():
        asked[0] += 1
        if not pending:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), asked[0]


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read():
    inner = Echo()
    status, body, asked = drive(
        BodySizeLimit(inner, max_bytes=1000), "/gradio_api/call/diagnose", [b"x" * 10], declared=200 * 2**20
    )
    assert (status, asked, inner.calls) == (413, 0, 0)
    assert json.loads(body)["detail"] == BODY_TOO_LARGE.format(size_mb=200.0, limit_mb=1000 / 2**20, file_mb=FILE_MB)


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_cap():
    inner = Echo()
    chunks = [b"x" * 400] * 10  # 4000 bytes, no Content-Length (chunked)
    status, body, asked = drive(BodySizeLimit(inner, max_bytes=1000), "/gradio_api/queue/join", chunks)
    assert (status, asked, inner.calls) == (413, 3, 0)  # stopped at 1200 bytes, never handed on
    assert json.loads(body)["detail"] == BODY_TOO_LARGE_STREAMED.format(limit_mb=1000 / 2**20, file_mb=FILE_MB)


@pytest.mark.parametrize("declared", [None, 1000])
def test_a_body_within_the_cap_reaches_the_app_unchanged(declared):
    inner = Echo()
    chunks = [b"a" * 500, b"b" * 500]
    status, body, _ = drive(
        BodySizeLimit(inner, max_bytes=1000), "/gradio_api/call/diagnose", chunks, declared=declared
    )
    assert (status, body, inner.calls) == (200, b"a" * 500 + b"b" * 500, 1)


def test_uploads_are_left_to_gradio_which_caps_them_file_by_file():
    inner = Echo()
    status, body, _ = drive(BodySizeLimit(inner, max_bytes=10), "/gradio_api/upload", [b"z" * 100], declared=100)
    assert (status, body) == (200, b"z" * 100)


def test_the_cap_admits_the_largest_image_the_api_accepts_inline():
    largest_data_url = len("data:image/jpeg;base64,") + 4 * math.ceil(DEFAULT_MAX_BYTES / 3)
    assert largest_data_url + 64 * 1024 < MAX_BODY_BYTES < 2 * DEFAULT_MAX_BYTES
    kwargs = request_limits.app_kwargs()
    assert [m.cls for m in kwargs["middleware"]] == [BodySizeLimit]


# ----------------------------------------------------------------------------- the served app
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import app as fairdx_app
    from inference import catalog
    from studio.settings import Settings
    from tests.app_runs import free_port

    settings = Settings.from_env(
        {"FAIRDX_RUNS_DIR": str(tmp_path_factory.mktemp("runs")), "FAIRDX_STUDIO": "off", "FAIRDX_WARMUP": "off"}
    )
    demo = fairdx_app.build_app(settings)
    kwargs = fairdx_app.launch_kwargs(settings)
    kwargs.pop("theme")
    port = free_port()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **kwargs)
    adapter = diagnose_view.default_adapter(catalog.available_runs(settings.run_dirs), "fundus")
    yield port, url, adapter
    demo.close()


def _post(port: int, body: bytes) -> tuple[int, bytes]:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        con.request("POST", "/gradio_api/call/diagnose", body=body, headers={"Content-Type": "application/json"})
        response = con.getresponse()
        return response.status, response.read()
    finally:
        con.close()


def _outcome(url: str, event_id: str) -> tuple[str, str]:
    """(event, data) of the last SSE event of a /call request."""
    with urllib.request.urlopen(f"{url}gradio_api/call/diagnose/{event_id}", timeout=120) as response:
        lines = response.read().decode().strip().splitlines()
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return events[-1], data[-1]


def test_a_200_mb_body_is_refused_with_413_before_it_is_sent(served):
    port, _, _ = served
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        con.putrequest("POST", "/gradio_api/call/jobs")
        con.putheader("Content-Type", "application/json")
        con.putheader("Content-Length", str(200 * 2**20))
        con.endheaders()
        con.send(b'{"data": ["')  # the server answers without waiting for the other 200 MB
        response = con.getresponse()
        status, detail = response.status, json.loads(response.read())["detail"]
    finally:
        con.close()
    assert status == 413
    assert detail == BODY_TOO_LARGE.format(size_mb=200.0, limit_mb=LIMIT_MB, file_mb=FILE_MB)


def test_a_chunked_body_over_the_cap_is_refused(served):
    port, _, _ = served

    def chunks():
        yield b'{"data": ["'
        for _ in range(int(LIMIT_MB) + 4):
            yield b"A" * 2**20
        yield b'"]}'

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        # The server may close before the last chunks are written; its answer is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            con.request(
                "POST",
                "/gradio_api/call/diagnose",
                body=chunks(),
                encode_chunked=True,
                headers={"Content-Type": "application/json"},
            )
        response = con.getresponse()
        status, detail = response.status, json.loads(response.read())["detail"]
    finally:
        con.close()
    assert status == 413
    assert detail == BODY_TOO_LARGE_STREAMED.format(limit_mb=LIMIT_MB, file_mb=FILE_MB)


def test_an_inline_image_still_works_and_an_oversized_one_is_refused_by_its_length(served, monkeypatch):
    port, url, adapter = served
    good = "data:image/png;base64," + base64.b64encode(EXAMPLE.read_bytes()).decode()
    status, body = _post(port, json.dumps({"data": [{"url": good}, "fundus", adapter]}).encode())
    assert status == 200
    event, data = _outcome(url, json.loads(body)["event_id"])
    assert event == "complete" and json.loads(data)[0]["label"] in ("glaucoma", "no glaucoma")

    decoded = []
    real = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: decoded.append(len(a[0])) or real(*a, **k))
    size = DEFAULT_MAX_BYTES + 3 * 2**19  # 11.5 MB of image: over the file limit, its URL under the body cap
    oversized = "data:image/png;base64," + "A" * (size // 3 * 4)
    status, body = _post(port, json.dumps({"data": [{"url": oversized}, "fundus", adapter]}).encode())
    assert status == 200  # 15.3 MB of JSON: within the cap, so the image check answers
    event, data = _outcome(url, json.loads(body)["event_id"])
    assert event == "error"
    assert json.loads(data)["error"] == TOO_MANY_BYTES.format(size_mb=size // 3 * 3 / 2**20, limit_mb=FILE_MB)
    assert decoded == []  # refused from the URL's length: nothing was decoded
