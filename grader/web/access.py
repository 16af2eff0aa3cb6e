"""Graded access to the customer endpoint (GRADING.md section 7): callers, their scopes,
the tokens file, and who may see what.

A tokens file (the ``api_tokens_file`` setting) is TOML, one table per caller::

    [callers.desk-1]
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    scope = "tier"

    [callers.audit]
    sha256 = "..."
    scope = "detail"
    detail_up_to = "B"   # optional: detail only for customers at or below B

It holds names, SHA-256 digests of tokens, scopes and limits, nothing else: any
other key (a ``token``), a malformed digest, a duplicated name or digest, an
unknown scope or tier refuses the file, in one line naming it and the problem.
So does a file that its group or others may read or write. The worker keeps
the digests only; a request's token is hashed and compared with every digest
by ``hmac.compare_digest``. Pure: no faust, no aiohttp (docs/api.md, "Access").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grader.core import tomlguard
from grader.core.errors import GraderError
from grader.core.policy import Policy
from grader.settings import Settings

SCOPES = ("tier", "detail")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)
KEYS = frozenset({"sha256", "scope", "detail_up_to"})
#: The caller that GRADER_API_TOKEN names, and the one of an endpoint without any token.
API_TOKEN_CALLER = "api-token"
ANONYMOUS = "anonymous"
RESERVED = frozenset({API_TOKEN_CALLER, ANONYMOUS})
PRIVATE_MODES = stat.S_IRWXG | stat.S_IRWXO  # no bit for group or others: 0600, 0400, 0700
HEADER = ("# grader's API callers (docs/api.md, \"Access\"): names, SHA-256 digests of\n"
          "# tokens, scopes and limits; never a token. Managed by `grader token`.\n")


class TokensFileError(GraderError):
    """A tokens file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Caller:
    """Who asks, with what rights: ``detail_up_to`` None is every customer's detail."""

    name: str
    scope: str  # "tier" | "detail"
    detail_up_to: str | None = None


@dataclass(frozen=True)
class Entry:
    """One caller of a tokens file, with the SHA-256 of its token (hex)."""

    caller: Caller
    sha256: str


def digest(token: bytes) -> bytes:
    """The SHA-256 of a token, as the file holds it (in hex) and the worker compares it."""
    return hashlib.sha256(token).digest()


def new_token() -> str:
    """A new random token: 43 URL-safe characters (256 bits)."""
    return secrets.token_urlsafe(32)


def parse_tokens(text: str, source: str, tiers: Sequence[str] | None = None) -> list[Entry]:
    """The callers of a tokens file's ``text``; ``tiers``: the support policy's, which a
    ``detail_up_to`` must name (None: not checked). Raises TokensFileError (one line)."""
    try:
        doc = tomlguard.loads(text)
    except tomlguard.UnreadableToml as exc:
        raise TokensFileError(f"tokens file {source}: not TOML: {exc}") from None
    extra = sorted(set(doc) - {"callers"})
    if extra:
        _refuse(source, f"{extra[0]!r} is not a key of a tokens file (only [callers.NAME] "
                        "tables)")
    callers = doc.get("callers", {})
    if not isinstance(callers, dict):
        _refuse(source, "callers must be a table of [callers.NAME] tables")
    entries: list[Entry] = []
    for name, table in callers.items():
        entries.append(_entry(source, name, table, tiers))
    _unique(source, entries)
    return entries


def _entry(source: str, name: Any, table: Any, tiers: Sequence[str] | None) -> Entry:
    where = f"caller {name!r}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        _refuse(source, f"{where}: a name is 1..64 chars of [A-Za-z0-9._-], first a letter "
                        "or digit")
    if name in RESERVED:
        _refuse(source, f"{where}: the name is reserved ({', '.join(sorted(RESERVED))})")
    if not isinstance(table, dict):
        _refuse(source, f"{where}: must be a table (sha256, scope, detail_up_to)")
    unknown = sorted(set(table) - KEYS, key=str)
    if unknown:  # a "token" key's value is never shown
        _refuse(source, f"{where}: {unknown[0]!r} is not a key (only sha256, scope, "
                        "detail_up_to; never a token)")
    sha = table.get("sha256")
    if not isinstance(sha, str) or not DIGEST.fullmatch(sha):
        _refuse(source, f"{where}: sha256 must be 64 lowercase hex digits")
    scope = table.get("scope")
    if scope not in SCOPES:
        _refuse(source, f"{where}: scope must be tier or detail, not {_shown(scope)}")
    up_to = table.get("detail_up_to")
    if up_to is not None:
        if scope != "detail":
            _refuse(source, f"{where}: detail_up_to is only for scope detail")
        if not isinstance(up_to, str) or (tiers is not None and up_to not in tiers):
            known = f" (the support policy's tiers: {', '.join(tiers)})" if tiers else ""
            _refuse(source, f"{where}: detail_up_to {_shown(up_to)} is not a tier{known}")
    return Entry(Caller(name, str(scope), up_to), sha)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__


def _unique(source: str, entries: Sequence[Entry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.sha256 in seen:
            _refuse(source, f"caller {entry.caller.name!r}: the same sha256 as another caller")
        seen.add(entry.sha256)
    # Names are TOML table keys: tomllib already refuses a table defined twice.


def _refuse(source: str, why: str) -> Any:
    raise TokensFileError(f"tokens file {source}: {why}")


def render(entries: Iterable[Entry]) -> str:
    """The text of a tokens file holding ``entries`` (parse_tokens reads it back)."""
    parts = [HEADER]
    for entry in entries:
        caller = entry.caller
        parts.append(f'\n[callers."{caller.name}"]\nsha256 = "{entry.sha256}"\n'
                     f'scope = "{caller.scope}"\n')
        if caller.detail_up_to is not None:
            parts.append(f"detail_up_to = {_toml_string(caller.detail_up_to)}\n")
    return "".join(parts)


def _toml_string(text: str) -> str:
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                         for c in text) + '"'


def check_private(path: Path) -> None:
    """Refuse a tokens file its group or others may read or write, or one that is not a
    regular file."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        _refuse(str(path), f"cannot read it: {exc.strerror}")
    if not stat.S_ISREG(mode):
        _refuse(str(path), "is not a regular file")
    if mode & PRIVATE_MODES:
        _refuse(str(path), f"group or others may read or write it (mode "
                           f"{stat.S_IMODE(mode):04o}): chmod 600 {path}")


def read_tokens_file(path: Path, tiers: Sequence[str] | None = None) -> list[Entry]:
    """The callers of the tokens file at ``path``, once it is checked private and valid."""
    check_private(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _refuse(str(path), f"cannot read it: {getattr(exc, 'strerror', None) or exc}")
    return parse_tokens(text, str(path), tiers)


def write_tokens_file(path: Path, entries: Sequence[Entry]) -> None:
    """Replace the tokens file at ``path`` by one holding ``entries``, readable by its owner
    alone from the first byte on (a new file next to it, made 0600, renamed over it)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render(entries))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        _refuse(str(path), f"cannot write it: {exc.strerror}")


class Access:
    """The callers a worker knows, by the digest of their tokens; none at all: the endpoint
    is open (on loopback only) and every request is the ``anonymous`` detail caller."""

    def __init__(self, entries: Sequence[Entry], api_token: str | None = None) -> None:
        known = [(bytes.fromhex(e.sha256), e.caller) for e in entries]
        if api_token:
            token_digest = digest(api_token.encode())
            if any(hmac.compare_digest(token_digest, d) for d, _c in known):
                raise TokensFileError("setting api_tokens_file (GRADER_API_TOKENS_FILE): a "
                                      "caller has the same token as GRADER_API_TOKEN")
            known.append((token_digest, Caller(API_TOKEN_CALLER, "detail")))
        self._known = tuple(known)

    @property
    def open(self) -> bool:
        """True when no token is configured at all."""
        return not self._known

    def caller(self, token: bytes) -> Caller | None:
        """The caller whose token this is, else None; every digest is compared, in constant
        time each, so the time taken tells nothing of which one matched."""
        if not self._known:
            return Caller(ANONYMOUS, "detail")
        if not token:
            return None
        given = digest(token)
        found = None
        for known_digest, caller in self._known:
            if hmac.compare_digest(given, known_digest):
                found = caller
        return found


def access_record(at: str, caller: Caller, customer_id: str, status: int, worker: str
                  ) -> dict[str, Any]:
    """One record of the access-log topic (GRADING.md section 7): never a token, a score."""
    return {"at": at, "caller": caller.name, "customer_id": customer_id,
            "scope": caller.scope, "status": status, "worker": worker}


def may_see_detail(caller: Caller, tier: str | None, tier_names: Sequence[str]) -> bool:
    """Whether ``caller`` sees the detail of a customer whose tier under the support policy
    is ``tier`` (None: not graded yet, which ranks below every tier)."""
    if caller.scope != "detail":
        return False
    if caller.detail_up_to is None or tier is None:
        return True
    if tier not in tier_names or caller.detail_up_to not in tier_names:
        return False  # a tier the policy no longer has: refused rather than guessed
    return tier_names.index(tier) >= tier_names.index(caller.detail_up_to)


def load_access(settings: Settings, support: Policy) -> Access:
    """The callers of the customer endpoint: GRADER_API_TOKEN's and the tokens file's,
    whose detail_up_to must be tiers of the support policy; a bad file is one line."""
    entries = []
    if settings.api_tokens_file is not None:
        entries = read_tokens_file(settings.api_tokens_file, support.tier_names)
    return Access(entries, settings.api_token)
