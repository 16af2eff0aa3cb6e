"""The worker's web side beyond ``/metrics``: ``GET /customers/{customer_id}`` and access.

docs/api.md and docs/openapi.yaml describe the endpoint. Any worker answers
any customer: the worker that owns the customer's partition answers from
its local store; another forwards the request to that owner (found in
Faust's assignment metadata, the table's changelog partitions per worker)
and relays its answer. A forward that fails (the owner left, a rebalance
is under way) is tried once more with fresh metadata, then answered 503;
it never waits longer than FORWARD_TIMEOUT.

With an API token (``GRADER_API_TOKEN``) or a tokens file (``api_tokens_file``,
grader/web/access.py), every request but ``/metrics`` needs ``Authorization: Bearer
<token>`` (the scheme in any case, as RFC 9110 says; the token's SHA-256 compared
with each caller's by ``hmac.compare_digest``), else 401; a token anywhere else (a
query string) is not looked at. The caller's scope decides what the owner answers:
``tier`` gets the whitelisted fields of customerview.tier_scope; ``detail`` limited
to a tier gets 403 for a customer above it. A forward carries the caller's
credentials, and the owner decides on them. Every 200, 403 and 404 of the customer
endpoint is recorded once on the access-log topic, by the worker that answers,
before the answer is sent (if it cannot be, the answer is 503). Every error is
a JSON object ``{"error": ...}``: 400 for a malformed customer id or request,
401, 403, 404 for an unknown customer or path, 405 for a method other than GET,
503 while the owner cannot be reached or is recovering (the worker installs this
module's access_middleware and makes aiohttp's own answers JSON too, with
grader/stream/faust_patches/webserver.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import faust
from aiohttp import web
from yarl import URL

from grader.core import step
from grader.core.customerview import CUSTOMER_ID, customer_document, tier_scope
from grader.core.grading import Grading
from grader.core.policy import Policy
from grader.core.topology import partition_of
from grader.web.access import Access, Caller, may_see_detail

log = logging.getLogger(__name__)
FORWARD_TIMEOUT = 5.0  # seconds for one forwarded request
FORWARDED = "X-Grader-Forwarded"  # set on a forwarded request: it is never forwarded again
OPEN_PATHS = frozenset({"/metrics"})
RELAYED = ("Retry-After", "WWW-Authenticate")  # headers of the owner's answer a forward keeps
CALLER = "grader.caller"  # the request's key for the authenticated Caller
LOGGED = (200, 403, 404)  # the customer endpoint's answers the access-log records

#: Records one answer of the customer endpoint: (caller, customer id, status); raises if
#: the record could not be written.
AccessLog = Callable[[Caller, str, int], Awaitable[None]]


class StoredCustomers(Protocol):
    """The worker's customers table, read by key (grader.stream.tables.TableStore)."""

    def get(self, key: bytes, partition: int) -> bytes | None:
        """The stored record of ``key`` (which lives in ``partition``), or None."""


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def bearer_token(request: web.Request) -> bytes:
    """The token of the request's ``Authorization: Bearer <token>``, else b"".

    The header's bytes as sent: aiohttp decodes header values as UTF-8 with
    surrogateescape, so any bytes are undone exactly (and no bytes are an error).
    """
    header = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    scheme, _space, credentials = header.partition(b" ")
    return credentials.lstrip(b" ") if scheme.lower() == b"bearer" else b""


def customer_path(customer_id: str) -> str:
    """``/customers/{customer_id}``, percent-encoded, ``.`` too: an id ``..`` or ``.`` is
    a path segment that URL normalisation would remove; ``%2E%2E`` is decoded to ``..``."""
    return "/customers/" + quote(customer_id, safe="").replace(".", "%2E")


def access_middleware(access: Access) -> Any:
    """The token check (the caller, in ``request[CALLER]``), and JSON bodies for aiohttp's
    own errors (404, 405)."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            caller = access.caller(bearer_token(request))
            if caller is None:
                return error(401, "a valid bearer token is needed (Authorization header)",
                             **{"WWW-Authenticate": 'Bearer realm="grader"'})
            request[CALLER] = caller
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            return error(exc.status, exc.reason, **headers)

    return middleware


def answer_for(caller: Caller, document: dict[str, Any], support: Policy
                ) -> tuple[int, dict[str, Any]]:
    """(status, body) of a known customer's ``document`` for ``caller`` (GRADING.md 7)."""
    if caller.scope == "tier":
        return 200, tier_scope(document)
    grade = document["policies"].get(support.name)
    if not may_see_detail(caller, None if grade is None else grade["tier"], support.tier_names):
        return 403, {"error": f"caller {caller.name} may see the detail of customers up to "
                              f"tier {caller.detail_up_to} of {support.name} only"}
    return 200, document


def install(app: faust.App, grading: Grading, customers: StoredCustomers, changelog: str,
            partitions: int, owns: Callable[[int], bool], support: Policy,
            access_log: AccessLog) -> None:
    """Add the customer endpoint to ``app``'s web server (the caller adds the
    access_middleware, which sets each request's caller)."""

    def owner_url(partition: int) -> str | None:
        """The web URL of the worker whose active changelog partitions hold ``partition``."""
        for url, topics in app.assignor.table_metadata(changelog).items():
            if partition in topics.get(changelog, ()):
                return str(url)
        return None

    async def forward(request: Any, customer_id: str, partition: int) -> web.Response:
        session = app.http_client
        headers = {FORWARDED: "1"}
        given = request.headers.get("Authorization")
        if given is not None and given.isprintable():  # not: undecodable bytes, controls
            headers["Authorization"] = given
        for attempt in range(2):
            url = owner_url(partition)
            if url is not None and url.rstrip("/") != str(app.conf.canonical_url).rstrip("/"):
                target = URL(url).with_path(customer_path(customer_id), encoded=True)
                try:
                    async with session.get(
                            target, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)) as answer:
                        body = await answer.read()
                        relayed = {name: answer.headers[name] for name in RELAYED
                                   if name in answer.headers}
                        return web.Response(body=body, status=answer.status, headers=relayed,
                                            content_type="application/json", charset="utf-8")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    log.info("forwarding a customer request to %s failed (%s)", url,
                             type(exc).__name__)
            if attempt == 0:
                await asyncio.sleep(0.5)  # a rebalance may be settling: look again
        return error(503, "the worker that owns this customer cannot be reached; retry",
                     **{"Retry-After": "1"})

    class Customer(faust.web.View):
        async def get(self, request: Any, customer_id: str) -> Any:
            if not CUSTOMER_ID.fullmatch(customer_id):
                return error(400, "customer_id must be 1..64 chars of [A-Za-z0-9._:-]")
            key = customer_id.encode()
            partition = partition_of(key, partitions)
            if not owns(partition):
                if request.headers.get(FORWARDED):
                    return error(503, "this worker no longer owns the customer; retry",
                                 **{"Retry-After": "1"})
                return await forward(request, customer_id, partition)
            if app.in_recovery:
                return error(503, "this worker is recovering its state; retry",
                             **{"Retry-After": "1"})
            stored = customers.get(key, partition)
            caller: Caller = request[CALLER]
            if stored is None:
                status, body = 404, {"error": f"no customer {customer_id}"}
            else:
                document = customer_document(step.decode_record(stored).state, grading)
                status, body = answer_for(caller, document, support)
            try:
                await access_log(caller, customer_id, status)
            except Exception as exc:  # no answer goes out unrecorded
                log.warning("the access-log record of a customer request could not be "
                            "written, answered 503: %s", type(exc).__name__)
                return error(503, "the access could not be recorded; retry",
                             **{"Retry-After": "1"})
            return web.json_response(body, status=status)

        async def post(self, request: Any, **_kw: Any) -> Any:
            return error(405, "only GET", Allow="GET")

        put = patch = delete = options = search = post

    app.page("/customers/{customer_id}")(Customer)
