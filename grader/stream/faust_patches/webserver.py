"""The worker's HTTP connections: how long they stay open, and the answers aiohttp gives
itself, in JSON like every other answer (docs/api.md, "Connections and malformed requests").

Faust serves its pages, ``/metrics`` and the customer endpoint on one aiohttp server
(``faust.web.drivers.aiohttp``). Two things of that server are set here, and the
access middleware (grader.web.customer) is added to it (:func:`add_middleware`).

* Its time limit. aiohttp closes a connection that holds no whole request after its
  ``keepalive_timeout``: one idle between requests or before its first, and one still
  sending its request line and headers (a half-open client), however slowly it sends.
  aiohttp's default is an hour, so a few hundred such connections used every file
  descriptor of a worker; ``web_idle_timeout`` (10 s) is given to aiohttp through Faust's
  ``web_application_options`` (aiohttp's ``handler_args``).
* The errors aiohttp answers before any middleware runs: a request it cannot parse (400:
  a request line or header line over 8,190 bytes, more than 128 headers, bytes HTTP does
  not allow) and an exception that escapes a handler (500). aiohttp answers them in plain
  text and logs each with a traceback at ERROR, which anyone can cause before any
  authentication. Here they are ``{"error": ...}``; a request that cannot be parsed is
  logged at debug level in one line, and a 500 keeps its traceback (it is a bug).

Kept by tests/unit/test_faust_web_patches.py (a plain Faust app's web server: without
:func:`install_json_errors` a 400 and a 500 are plain text, without :func:`add_middleware`
its pages are open; tried 2026-12-08) and tests/integration/test_customer_api_hostile.py,
test_access.py (grader's worker).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)


def application_options(idle_timeout: float) -> dict[str, Any]:
    """Faust's ``web_application_options``: aiohttp's connection time limit."""
    return {"handler_args": {"keepalive_timeout": idle_timeout}}


def add_middleware(driver: Any, middleware: Any) -> None:
    """Add an aiohttp ``middleware`` to Faust's aiohttp ``driver`` (``app.web``).

    Faust has no setting for middlewares; its driver's aiohttp Application (``web_app``,
    not started yet) takes them. Call before the server starts.
    """
    driver.web_app.middlewares.append(middleware)


def install_json_errors(driver: Any) -> None:
    """Make the connections of Faust's aiohttp ``driver`` answer aiohttp's own errors in JSON.

    Faust's driver keeps its ``AppRunner`` in the private ``_runner`` (made in its
    ``__init__`` with ``access_log=None``) and offers no setting for another: this runner
    differs only in the class of its connections' handler. Call before the server starts.
    """
    driver._runner = JsonErrorRunner(driver.web_app, access_log=None)


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, whose own error answers are JSON."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            super().handle_error(request, status, exc, message)  # logs; raises if mid-answer
            answer = "internal error" if status == 500 else "the request timed out"
        else:
            log.debug("refused a request from %s that is not valid HTTP/1.1: %r",
                      request.remote, message)
            if request.writer.output_size > 0:  # as aiohttp: an answer has begun
                raise ConnectionError("cannot answer an error after the answer began")
            answer = ("a request line or header line is too long (at most 8190 bytes)"
                      if isinstance(exc, LineTooLong) else "not a valid HTTP/1.1 request")
        response = web.json_response({"error": answer}, status=status)
        response.force_close()  # as aiohttp: the connection may hold the rest of anything
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, whose connections have a JsonErrorHandler."""

    def __call__(self) -> web.RequestHandler:
        # aiohttp's Server.__call__ (3.14) with our handler class, for which it has no
        # option; _loop and _kwargs are the private attributes that body reads.
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """aiohttp's runner of a web Application, serving it with a JsonErrorServer."""

    async def _make_server(self) -> web.Server:
        # The private step of AppRunner.setup() that makes the server (and starts the
        # application); ours is the same object with our class: JsonErrorServer adds no
        # state, only the handler class of new connections.
        server = await super()._make_server()
        server.__class__ = JsonErrorServer
        return server
