"""Support queues in Redis: each changed customer's keys, rewritten atomically.

The worker writes a customer here after its record is stored and its Kafka
outputs are acknowledged (docs/support-queues.md). One Lua script per
customer replaces, in one atomic step, the customer's hash and the place of
every ticket it knows (grader/core/support.py, ``view``): no reader sees a
customer with some tickets moved and others not. The writes are absolute,
so writing a view again (a redelivery, a restart) gives the same keys.

Redis down: the worker holds its stream. ``write`` retries until Redis
answers (the batch is not acknowledged meanwhile, so a worker killed during
the outage leaves it to the next owner, which writes it again). Only Redis
being unavailable holds it (:func:`unavailable`): a key of the wrong type
under the prefix is replaced by the script (grader owns those keys), and a
customer whose write Redis refuses otherwise is skipped and logged by id,
so one customer never holds back the others. Log lines name keys and
customers, never a tier (GRADING.md section 7). A Redis that
came back empty is noticed by its new ``run_id``: the worker then rewrites
every customer it owns (``SupportQueues.restarted``).

The scripts name keys built from the prefix inside Lua, so this is for one
Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from grader.core.policy import Policy
from grader.core.state import CustomerState
from grader.core.support import check_support_policy, view

log = logging.getLogger(__name__)
CHUNK = 500  # customers per pipeline round trip
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between tries while Redis is down
#: Error codes by which Redis refuses any write for now (loading, a busy script, out of
#: memory, a replica, a failed save...): Redis is unavailable, as when it is down.
UNAVAILABLE = frozenset({"LOADING", "BUSY", "OOM", "READONLY", "MISCONF", "MASTERDOWN",
                         "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT"})

# KEYS: none (one server). ARGV: prefix, customer_id, the customer's version ("revision
# as_of sequence", or "" for none), number of hash fields, the fields and values, then 6
# per ticket: id, open ("1"/"0"), queue, subject, opened_at, score.
# grader owns the keys under its prefix: one it writes or removes from that holds another
# type (a string at a ticket key, a list at a queue key) is deleted first, so a stray key
# never fails the write. Returns the keys so replaced: key, type found, type wanted, ...
# The version is kept at {prefix}version:{customer_id}; a write whose version is older
# than the one kept (compared number by number, in order) changes nothing and returns
# "stale" (issue 20: a worker that lost its partitions must not overwrite the new
# owner's view). An equal version is written (the same state written again).
WRITE_CUSTOMER = """
local prefix, customer, version = ARGV[1], ARGV[2], ARGV[3]
local replaced, claimed = {}, {}
local function claim(key, want)
  if claimed[key] then return end
  claimed[key] = true
  local found = redis.call('TYPE', key)['ok']
  if found ~= want and found ~= 'none' then
    redis.call('DEL', key)
    replaced[#replaced + 1] = key
    replaced[#replaced + 1] = found
    replaced[#replaced + 1] = want
  end
end
if version ~= '' then
  local vkey = prefix .. 'version:' .. customer
  claim(vkey, 'string')
  local kept = redis.call('GET', vkey)
  if kept then
    local old, new = {}, {}
    for x in string.gmatch(kept, '%S+') do old[#old + 1] = tonumber(x) or 0 end
    for x in string.gmatch(version, '%S+') do new[#new + 1] = tonumber(x) or 0 end
    for k = 1, #new do
      local o = old[k] or 0
      if new[k] < o then return 'stale' end
      if new[k] > o then break end
    end
  end
  redis.call('SET', vkey, version)
end
local ckey = prefix .. 'customer:' .. customer
local n = tonumber(ARGV[4])
claim(ckey, 'hash')
redis.call('DEL', ckey)
if n > 0 then
  redis.call('HSET', ckey, unpack(ARGV, 5, 4 + 2 * n))
end
local i = 5 + 2 * n
while i <= #ARGV do
  local id, open, queue = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local tkey = prefix .. 'ticket:' .. id
  claim(tkey, 'hash')
  local old = redis.call('HGET', tkey, 'queue')
  if old and (open == '0' or old ~= queue) then
    local okey = prefix .. 'queue:' .. old
    claim(okey, 'zset')
    redis.call('ZREM', okey, id)
  end
  redis.call('DEL', tkey)
  if open == '1' then
    redis.call('HSET', tkey, 'customer_id', customer, 'queue', queue,
               'subject', ARGV[i + 3], 'opened_at', ARGV[i + 4])
    local qkey = prefix .. 'queue:' .. queue
    claim(qkey, 'zset')
    redis.call('ZADD', qkey, ARGV[i + 5], id)
  end
  i = i + 6
end
return replaced
"""


#: What a support desk's ACL user may run (GRADING.md section 7; docs/support-queues.md,
#: "A support desk's ACL user"): reads of the queues, tickets and customers, nothing else.
DESK_COMMANDS = ("zrange", "zcard", "zscore", "zrank", "hget", "hmget", "hgetall", "ping")
DESK_KEYS = ("queue", "ticket", "customer")


def desk_acl(prefix: str) -> list[str]:
    """The ``ACL SETUSER NAME on >PASSWORD ...`` rules of a support desk's user under
    ``prefix``: no key, channel or command but DESK_COMMANDS, and those read-only on the
    queue, ticket and customer keys (``%R~``)."""
    return ["resetkeys", "resetchannels", "-@all", *(f"+{c}" for c in DESK_COMMANDS),
            *(f"%R~{prefix}{kind}:*" for kind in DESK_KEYS)]


class RedisSetupError(Exception):
    """Redis cannot be used as configured; the message names the setting."""


def shown(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL: never its user or password."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return parsed.path
    return f"{parsed.hostname}:{parsed.port or 6379}"


def client(url: str, files: tuple[str | None, str | None, str | None]) -> Any:
    """A redis-py asyncio client for ``url`` (user and password in it), with TLS files.

    With a ``rediss://`` URL the server's certificate must be signed by ``redis_ca_file``
    (the system's CAs when empty) and name the URL's host; the client certificate and key,
    if set, are shown to a server that asks for one.
    """
    ca, cert, key = files
    kwargs: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}
    if url.startswith("rediss://"):
        kwargs.update(ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_check_hostname=True,
                      ssl_ca_certs=ca, ssl_certfile=cert, ssl_keyfile=key)
    return aioredis.Redis.from_url(url, **kwargs)


def check_tls_files(files: tuple[str | None, str | None, str | None]) -> None:
    """Load the CA, and the client certificate with its key, as the TLS connection will;
    a file that is not what it should be raises RedisSetupError naming its setting."""
    ca, cert, key = files
    try:
        context = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise RedisSetupError(f"setting redis_ca_file (GRADER_REDIS_CA_FILE): cannot read CA "
                              f"certificates from {ca}: {_ssl_reason(exc)}") from None
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise RedisSetupError(f"setting redis_cert_file (GRADER_REDIS_CERT_FILE): cannot "
                                  f"use the client certificate {cert} with the key "
                                  f"redis_key_file ({key}): {_ssl_reason(exc)}") from None


def _ssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason for an ssl error (``KEY_VALUES_MISMATCH``), else its message."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message)
    if reason:
        return str(reason)
    return _without_secrets(exc) or type(exc).__name__


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


#: X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH: the host is the URL's.
HOST_MISMATCH = (62, 64)


def tls_problem(exc: BaseException, where: str,
                files: tuple[str | None, str | None, str | None]) -> str | None:
    """One line naming the setting to check, if ``exc`` came from setting up TLS with
    Redis at ``where``; None for any other error."""
    ca, cert, _key = files
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            if cause.verify_code in HOST_MISMATCH:
                return (f"setting redis_url (GRADER_REDIS_URL): the certificate of Redis at "
                        f"{where} is not valid for that host: {cause.verify_message}")
            trusted = f"redis_ca_file ({ca})" if ca else "the system's CAs (redis_ca_file is empty)"
            return (f"setting redis_ca_file (GRADER_REDIS_CA_FILE): the certificate of Redis at "
                    f"{where} is not trusted by {trusted}: {cause.verify_message}")
        if isinstance(cause, ssl.SSLError):
            reason = _ssl_reason(cause)
            if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason
                                      or "ACCESS_DENIED" in reason):
                refused = f"refused the client certificate {cert}" if cert else \
                    "requires a client certificate, and redis_cert_file is empty"
                return (f"setting redis_cert_file (GRADER_REDIS_CERT_FILE): Redis at {where} "
                        f"{refused}: {reason}")
            return (f"setting redis_url (GRADER_REDIS_URL): TLS with Redis at {where} failed "
                    f"(does it listen for TLS there?): {reason}")
        if isinstance(cause, ConnectionResetError) and not cert:
            # TLS 1.3: a server that requires a client certificate closes the connection
            # after the handshake, which the client sees at its first read.
            return (f"setting redis_cert_file (GRADER_REDIS_CERT_FILE): Redis at {where} closed "
                    f"the TLS connection: it may require a client certificate, and "
                    f"redis_cert_file is empty")
    return None


def script_args(prefix: str, customer: dict[str, Any]) -> list[str]:
    """WRITE_CUSTOMER's ARGV for one ``grader.core.support.view``."""
    version = " ".join(str(n) for n in customer.get("version", ()))
    args = [prefix, customer["customer_id"], version, str(len(customer["fields"]))]
    for name, value in customer["fields"].items():
        args += [name, value]
    for ticket_id, is_open, queue, subject, opened_at, score in customer["tickets"]:
        args += [ticket_id, "1" if is_open else "0", queue, subject, opened_at, str(score)]
    return args


class SupportQueues:
    """Writes customers' support-queue keys to one Redis."""

    def __init__(self, url: str, prefix: str, support: Policy,
                 files: tuple[str | None, str | None, str | None] = (None, None, None),
                 on_error: Callable[[], None] | None = None) -> None:
        check_support_policy(support)
        self._on_error = on_error  # called at each failed try (the worker counts them)
        self.where = shown(url)
        self.tls = url.startswith("rediss://")
        self.files = files
        self.prefix = prefix
        self.support = support
        self._redis = client(url, files)
        self._script = self._redis.register_script(WRITE_CUSTOMER)
        self._run_id: str | None = None  # the server's, when first reached: a new one = restart
        self._lost = False  # a restart seen by a write, not yet reported by restarted()
        self._down_since: float | None = None

    async def connect(self) -> None:
        """Reach Redis once, or raise RedisSetupError naming the setting (start-up)."""
        if self.tls:
            check_tls_files(self.files)
        try:
            self._run_id = await self._server_run_id()
        except AuthenticationError:
            raise RedisSetupError(f"setting redis_url (GRADER_REDIS_URL): Redis at "
                                  f"{self.where} refused the user name or password") from None
        except (RedisError, OSError) as exc:
            problem = tls_problem(exc, self.where, self.files) if self.tls else None
            raise RedisSetupError(problem or (
                f"setting redis_url (GRADER_REDIS_URL): cannot reach Redis at {self.where}: "
                f"{type(exc).__name__}: {_without_secrets(exc)}")) from None

    async def _server_run_id(self) -> str:
        info = await self._redis.info("server")
        return str(info["run_id"])

    async def write(self, states: Sequence[CustomerState]) -> list[str]:
        """Rewrite these customers' keys; while Redis is down, wait and try again.

        A customer whose write Redis refuses for a reason of its own (not Redis being
        unavailable, :func:`unavailable`) is skipped, logged by id: the others go on.
        Returns the ids of the customers skipped.
        """
        if not states:
            return []
        if self._run_id is None:
            await self._retrying(self._check_run_id)
        calls = [script_args(self.prefix, view(state, self.support)) for state in states]
        skipped: list[str] = []
        for start in range(0, len(calls), CHUNK):
            skipped += await self._retrying(self._write_chunk, calls[start:start + CHUNK])
        return skipped

    async def _write_chunk(self, calls: list[list[str]]) -> list[str]:
        """Run the chunk's scripts; the ids of the customers refused (each counted).

        Raises the first error that says Redis is unavailable, so the chunk is retried
        (the writes are absolute, so the scripts that did run give the same keys again).
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in calls:
                await self._script(keys=[], args=args, client=pipe)
            # Errors come back unannotated: redis-py's annotation quotes the arguments.
            results = await pipe.execute(raise_on_error=False)
        skipped: list[str] = []
        stale: list[str] = []  # refused: Redis holds a newer version (another owner's)
        down: BaseException | None = None
        for args, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                if unavailable(result):
                    down = down or result
                    continue
                skipped.append(args[1])
                if self._on_error is not None:
                    self._on_error()
                log.error("Redis refused the support-queue keys of customer %s (%s): "
                          "skipped; its next change, or grader redis-sync, writes them",
                          args[1], reason(result))
                log.debug("customer %s: Redis refused %s: %s", args[1], args, result)
                continue
            if result == b"stale" or result == "stale":
                stale.append(args[1])
                continue
            self._replaced(result)
        if stale:
            log.warning("Redis holds a newer version of %d customers (%s%s) than this "
                        "worker's: their older writes were refused", len(stale),
                        ", ".join(stale[:5]), ", ..." if len(stale) > 5 else "")
        if down is not None:
            raise down
        return skipped

    @staticmethod
    def _replaced(result: Any) -> None:
        """Log the wrong-typed keys a script replaced, by name only."""
        items = [item.decode() if isinstance(item, bytes) else str(item)
                 for item in result or ()]
        for start in range(0, len(items) - 2, 3):
            key, found, wanted = items[start:start + 3]
            log.warning("Redis key %s held a %s, not a %s: replaced (grader owns the keys "
                        "under its prefix)", key, found, wanted)

    async def _retrying(self, call: Any, *args: Any) -> Any:
        delay = RETRY_FIRST
        while True:
            try:
                result = await call(*args)
            except (RedisError, OSError) as exc:
                if self._on_error is not None:
                    self._on_error()
                loop = asyncio.get_running_loop()
                if self._down_since is None:
                    self._down_since = loop.time()
                    log.warning("Redis at %s failed (%s): holding the stream until it "
                                "answers", self.where, reason(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._down_since is not None:
                log.warning("Redis at %s answers again after %.1f s", self.where,
                            asyncio.get_running_loop().time() - self._down_since)
                self._down_since = None
                await self._retrying(self._check_run_id)
            return result

    async def _check_run_id(self) -> None:
        """Learn the server's run_id; a different one than before means it restarted."""
        run_id = await self._server_run_id()
        if self._run_id is not None and run_id != self._run_id:
            self._lost = True
        self._run_id = run_id

    async def restarted(self) -> bool:
        """Whether Redis restarted (a new run_id) since last asked: its keys may be gone.

        False while Redis does not answer (a write will wait for it anyway).
        """
        try:
            await self._check_run_id()
        except (RedisError, OSError):
            return False
        lost, self._lost = self._lost, False
        return lost

    async def remove_stale(self, states: Mapping[str, CustomerState]) -> int:
        """Delete what no state of ``states`` (every customer, by id) holds under the
        prefix: ticket hashes and queue entries of tickets not open, customer hashes of
        unknown customers (`grader redis-sync`); how many keys or entries were removed."""
        open_in: dict[str, str] = {ticket_id: ticket.queue for state in states.values()
                                   for ticket_id, ticket in state.tickets.items()
                                   if ticket.is_open}
        removed = 0
        async for key in self._keys("ticket:"):
            if key.decode()[len(self.prefix) + len("ticket:"):] not in open_in:
                removed += await self._redis.delete(key)
        async for key in self._keys("queue:"):
            removed += await self._remove_from_queue(key, open_in)
        async for key in self._keys("customer:"):
            if key.decode()[len(self.prefix) + len("customer:"):] not in states:
                removed += await self._redis.delete(key)
        return removed

    def _keys(self, kind: str) -> Any:
        """The keys of one kind ("ticket:", ...) under the prefix (an async iterator)."""
        return self._redis.scan_iter(match=_glob(self.prefix) + kind + "*", count=1000)

    async def _remove_from_queue(self, key: bytes, open_in: Mapping[str, str]) -> int:
        """Remove the entries of queue ``key`` whose ticket is not open in that queue."""
        queue = key.decode()[len(self.prefix) + len("queue:"):]
        found = (await self._redis.type(key)).decode()
        if found != "zset":  # no open ticket is there: the write would have replaced it
            if found != "none":
                log.warning("Redis key %s held a %s, not a zset: removed (no open ticket "
                            "is in that queue)", key.decode(), found)
            return int(await self._redis.delete(key))
        members = [m.decode() for m in await self._redis.zrange(key, 0, -1)]
        stale = [m for m in members if open_in.get(m) != queue]
        return int(await self._redis.zrem(key, *stale)) if stale else 0

    async def close(self) -> None:
        await self._redis.aclose()


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis as a whole cannot take writes now (down, unreachable,
    timing out, loading, busy, out of memory, a replica): then the worker holds its
    stream. Any other error (a key of the wrong type, an ACL that refuses one key) is
    the customer's alone."""
    if isinstance(exc, (ReadOnlyError, OutOfMemoryError, NoScriptError)):
        return True
    if isinstance(exc, ResponseError):
        return _code(exc) in UNAVAILABLE
    return isinstance(exc, (RedisError, OSError))


#: Redis 6 wraps the error of a command a script ran: "Error running script (call to
#: f_SHA): @user_script:5: @user_script: 5: -OOM command not allowed ...".
_SCRIPT_ERROR = re.compile(r"@user_script: ?\d+: -?([A-Z][A-Z_]+) ")


def _code(exc: BaseException) -> str:
    """Redis's error code (``WRONGTYPE``, ``OOM``): that of the command a script ran,
    else the first word of the message."""
    message = _redis_message(exc)
    inner = _SCRIPT_ERROR.findall(message)
    if inner:
        return str(inner[-1])
    words = message.split(maxsplit=1)
    return words[0] if words and words[0].isupper() else ""


def reason(exc: BaseException) -> str:
    """``exc`` for a log line: its type and Redis's message (one line), never the
    command's arguments (which redis-py quotes in a pipeline's errors, tiers included)."""
    message = _redis_message(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


#: redis-py's annotation of a pipeline's error: "Command # N (ARGS...) of pipeline
#: caused error: MESSAGE", whose ARGS are a script's arguments (a customer's tiers).
_ANNOTATION = " of pipeline caused error: "


def _redis_message(exc: BaseException) -> str:
    """The error's message without redis-py's annotation, cut to one line."""
    text = str(exc)
    if text.startswith("Command # "):
        text = text.rpartition(_ANNOTATION)[2] if _ANNOTATION in text else ""
    return text.splitlines()[0][:200] if text.strip() else ""


def _without_secrets(exc: BaseException) -> str:
    """An error's message, cut to one line; redis-py's name host and port only."""
    return str(exc).splitlines()[0][:200] if str(exc) else ""
