"""Whole checks of the kafka_url and redis_url settings, done once at settings load.

A URL that passes here is one the Kafka and Redis clients can take: each host
is a name or an IP address (IPv6 in brackets), each port a number 1..65535.
Each check returns why a URL is refused, or None; the reason never repeats a
user name or password.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlsplit

KAFKA_SCHEMES = ("kafka", "aiokafka")
REDIS_SCHEMES = ("redis", "rediss", "unix")
_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_HOST_PORT = re.compile(r"(\[[^\[\]]*\]|[^\[\]:]*)(?::([^:]*))?")


def kafka_url_problem(url: str) -> str | None:
    """Why ``kafka://h1:9092;h2:9092`` (Faust's form; ``,`` too) is not a Kafka URL, if so."""
    if not url.startswith(tuple(f"{s}://" for s in KAFKA_SCHEMES)):
        return "not a kafka:// URL"
    servers = [part.strip() for part in url.replace(",", ";").split(";") if part.strip()]
    for part in servers:
        scheme, _, rest = part.rpartition("://")
        if scheme and scheme not in KAFKA_SCHEMES:
            return f"{part!r} is not a kafka:// URL"
        rest = rest.removesuffix("/")
        if not rest:
            return "names no host"
        problem = _host_port_problem(rest)
        if problem:
            return problem
    return None if servers else "names no host"


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a ``redis://``, ``rediss://`` or ``unix://`` URL, if so."""
    if not url.startswith(tuple(f"{s}://" for s in REDIS_SCHEMES)):
        return "not a redis://, rediss:// or unix:// URL"
    try:
        parsed = urlsplit(url)
    except ValueError as exc:  # an unclosed '[' (an IPv6 host)
        return str(exc)
    if parsed.fragment:
        return "has a #fragment"
    for name, value in parse_qsl(parsed.query, keep_blank_values=True):
        if name != "db" or not _digits(value):
            return "takes no query other than ?db=N"
    if parsed.scheme == "unix":
        return None if parsed.path and not parsed.hostname else "names no socket path"
    if parsed.path.strip("/") and not _digits(parsed.path.strip("/")):
        return f"the database {parsed.path.strip('/')!r} is not a number"
    host_port = parsed.netloc.rpartition("@")[2]  # never the user name or password
    return _host_port_problem(host_port) if host_port else "names no host"


def _host_port_problem(text: str) -> str | None:
    """Why ``host``, ``host:port`` or ``[ipv6]:port`` is not a server address, if so."""
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        return f"{text!r} is not host:port"
    host, port = match.groups()
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host!r} is not an IPv6 address"
    elif not _NAME.fullmatch(host):
        return f"{host!r} is not a host name or IP address"
    if port is not None and not (_digits(port) and 1 <= int(port) <= 65_535):
        return f"port {port!r} is not a number 1..65535"
    return None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 9
