"""`grader token add|list|remove`: the callers of the customer endpoint in the tokens file
named by the ``api_tokens_file`` setting (GRADING.md sections 6 and 7, docs/api.md).

``add`` prints the new token once, alone on standard output, so that a script can take
it (``TOKEN=$(grader token add desk-1 --scope tier)``); everything else goes to standard
error. The file gets only the token's SHA-256, and is created readable by its owner alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grader.core.errors import GraderError
from grader.web.access import (
    NAME,
    RESERVED,
    SCOPES,
    Caller,
    Entry,
    TokensFileError,
    digest,
    new_token,
    read_tokens_file,
    write_tokens_file,
)


def register(subparsers: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add `grader token` and its subcommands to the `grader` parser."""
    token = subparsers.add_parser("token", help="manage the callers of the customer endpoint "
                                                "(the api_tokens_file setting)")
    sub = token.add_subparsers(dest="token_command", required=True,
                               parser_class=parser_class)
    add = sub.add_parser("add", help="add a caller; prints its new token once, alone")
    add.add_argument("name", help="the caller's name (1..64 chars of [A-Za-z0-9._-])")
    add.add_argument("--scope", required=True, choices=SCOPES,
                     help="tier: tiers and flags only; detail: everything")
    add.add_argument("--detail-up-to", default=None, metavar="TIER",
                     help="with --scope detail: only for customers at or below this tier "
                          "of the support policy")
    sub.add_parser("list", help="list the callers (never a token)")
    remove = sub.add_parser("remove", help="remove a caller")
    remove.add_argument("name")


def run(args: argparse.Namespace) -> int:
    """Run `grader token ...`."""
    from grader.settings import load_grading, load_settings, support_policy

    settings = load_settings()
    path = settings.api_tokens_file
    if path is None:
        raise GraderError("setting api_tokens_file (GRADER_API_TOKENS_FILE): not set; it "
                          "names the tokens file to manage")
    tiers = support_policy(settings, load_grading(settings)).tier_names
    entries = read_tokens_file(path, tiers) if _exists(path) else []
    if args.token_command == "list":
        for entry in entries:
            caller = entry.caller
            print(f"{caller.name}\t{caller.scope}\t{caller.detail_up_to or '-'}")
        return 0
    if args.token_command == "remove":
        kept = [e for e in entries if e.caller.name != args.name]
        if len(kept) == len(entries):
            raise GraderError(f"tokens file {path}: no caller {args.name!r}")
        write_tokens_file(path, kept)
        print(f"grader: removed caller {args.name} from {path}", file=sys.stderr)
        return 0
    return _add(path, entries, args, tiers)


def _exists(path: Path) -> bool:
    try:
        return path.lstat() is not None
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise TokensFileError(f"tokens file {path}: {exc.strerror}") from None


def _add(path: Path, entries: list[Entry], args: argparse.Namespace,
         tiers: tuple[str, ...]) -> int:
    name, up_to = args.name, args.detail_up_to
    if not NAME.fullmatch(name) or name in RESERVED:
        raise GraderError(f"name {name!r}: 1..64 chars of [A-Za-z0-9._-], first a letter or "
                          f"digit, and not {' or '.join(sorted(RESERVED))}")
    if any(e.caller.name == name for e in entries):
        raise GraderError(f"tokens file {path}: a caller {name!r} exists already (remove it "
                          "first)")
    if up_to is not None and args.scope != "detail":
        raise GraderError("--detail-up-to: only with --scope detail")
    if up_to is not None and up_to not in tiers:
        raise GraderError(f"--detail-up-to {up_to!r}: not a tier of the support policy "
                          f"({', '.join(tiers)})")
    token = new_token()
    entry = Entry(Caller(name, args.scope, up_to), digest(token.encode()).hex())
    write_tokens_file(path, [*entries, entry])
    print(token)
    limit = f", detail up to {up_to}" if up_to else ""
    print(f"grader: added caller {name} (scope {args.scope}{limit}) to {path}; its token is "
          "shown once, above, and stored nowhere", file=sys.stderr)
    return 0
