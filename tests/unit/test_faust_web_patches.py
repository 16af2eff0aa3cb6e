"""grader/stream/faust_patches/webserver.py on Faust's own aiohttp web driver, grader out
of the picture: a plain ``faust.App``'s web server, started with and without each patch.

* JSON errors (``install_json_errors``, the driver's private ``_runner``): a request aiohttp
  cannot parse (400), and an exception that escapes a page (500), are answered in plain
  text by Faust as it is, in JSON with the patch.
* The access middleware (``add_middleware``, the driver's ``web_app.middlewares``): Faust
  has no setting for middlewares; one appended before the server starts guards its pages.

The "faust_as_is" cases assert what Faust does wrong: when one fails, Faust (or aiohttp)
changed, and the patch may be moot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest
from aiohttp import web

from grader.devtools.services import free_port
from grader.stream.faust_patches.webserver import add_middleware, install_json_errors

TOO_LONG = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
GET_PAGE = b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
GET_BROKEN = b"GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def answer_of(driver: Any, port: int, request: bytes) -> tuple[int, str, bytes]:
    """Start ``driver``'s server, send ``request`` raw, and return the answer's status,
    content type and body."""
    await driver.start_server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)  # the server closes after it
        writer.close()
    finally:
        await driver.stop_server()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


def web_driver() -> tuple[Any, int]:
    """Faust's aiohttp driver of a plain app, with one page at /page, and its port."""
    port = free_port()
    app = faust.App("web-patches", web_bind="127.0.0.1", web_port=port, autodiscover=False)
    driver = app.web

    async def page(_request: web.Request) -> web.Response:
        return web.json_response({"page": "served"})

    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("a bug in a page")

    driver.web_app.router.add_get("/page", page)
    driver.web_app.router.add_get("/broken", broken)
    return driver, port


@pytest.mark.parametrize("request_, status, error", [
    (TOO_LONG, 400, "a request line or header line is too long (at most 8190 bytes)"),
    (GET_BROKEN, 500, "internal error"),
], ids=["unparsable", "handler_raised"])
@pytest.mark.parametrize("patched", [False, True], ids=["faust_as_is", "with_json_errors"])
def test_errors_aiohttp_answers_itself_are_answered_in_json(patched: bool, request_: bytes,
                                                            status: int, error: str) -> None:
    driver, port = web_driver()
    if patched:
        install_json_errors(driver)
    answered, content_type, body = asyncio.run(answer_of(driver, port, request_))
    assert answered == status
    if patched:
        assert content_type.startswith("application/json")
        assert json.loads(body) == {"error": error}
    else:
        # Faust as it is answers in aiohttp's plain text: when it answers JSON, the patch
        # (install_json_errors) is moot
        assert content_type.startswith("text/plain"), (content_type, body)
        with pytest.raises(ValueError):
            json.loads(body)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refuse_all(request: web.Request, handler: Handler) -> web.StreamResponse:
    return web.json_response({"error": "no token"}, status=401)


@pytest.mark.parametrize("patched", [False, True], ids=["faust_as_is", "with_middleware"])
def test_a_middleware_added_before_the_server_starts_guards_faust_pages(patched: bool) -> None:
    driver, port = web_driver()
    if patched:
        add_middleware(driver, refuse_all)
    status, _, body = asyncio.run(answer_of(driver, port, GET_PAGE))
    if patched:
        assert (status, json.loads(body)) == (401, {"error": "no token"})
    else:
        # Faust has no setting for middlewares: without add_middleware its pages are open
        assert (status, json.loads(body)) == (200, {"page": "served"})
