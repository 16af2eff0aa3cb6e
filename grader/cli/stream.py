"""The `grader worker`, `grader produce`, `grader tick` and `grader redis-sync` subcommands.

Importing this module imports neither faust nor kafka: the heavy modules are
imported inside ``run`` after settings and policies have been validated, so
a bad setting or policy is one line and a non-zero exit before any connection.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader.cli import terminal
from grader.core.errors import GraderError

if TYPE_CHECKING:
    from grader.settings import Settings

COMMANDS = ("worker", "produce", "tick", "redis-sync")


def register(subparsers: Any) -> None:
    """Add the streaming subcommands to the `grader` parser."""
    subparsers.add_parser("worker", help="run the streaming worker (Faust) on Kafka")
    produce = subparsers.add_parser("produce", help="send a JSON-lines file to the input topics")
    produce.add_argument("events", type=Path, help="events file (JSON lines)")
    tick = subparsers.add_parser("tick", help="ask the workers to re-grade everyone as of T")
    tick.add_argument("--as-of", required=True, help="RFC 3339 instant T")
    subparsers.add_parser("redis-sync", help="rewrite the support queues in Redis from the "
                          "workers' state")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand named by ``args.command``."""
    if args.command == "worker":
        return _worker()
    if args.command == "produce":
        return _produce(args.events)
    if args.command == "redis-sync":
        return _redis_sync()
    return _tick(args.as_of)


def _worker() -> int:
    from grader.settings import load_grading, load_settings, support_policy
    from grader.stream.options import load_options
    from grader.stream.worker import exit_on_signal_until_started, reach_redis, run_worker
    from grader.web.access import load_access

    exit_on_signal_until_started()
    settings = load_settings()
    options = load_options(settings)
    grading = load_grading(settings)
    _check_web_access(settings)
    access = load_access(settings, support_policy(settings, grading))  # bad file: one line
    # From here on the worker keeps GRADER_API_TOKEN's digest only (in ``access``).
    settings = dataclasses.replace(settings, api_token=None)
    _reach(settings)
    reach_redis(settings, grading)
    return run_worker(settings, grading, options, access)


def _check_web_access(settings: Settings) -> None:
    """GRADING.md section 7: the customer endpoint is open on loopback only."""
    import ipaddress

    host = settings.web_host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not settings.api_token and settings.api_tokens_file is None:
        raise GraderError(f"setting web_host (GRADER_WEB_HOST): {host} is not a loopback "
                          "address, so the customer endpoint needs GRADER_API_TOKEN or "
                          "GRADER_API_TOKENS_FILE")


def _redis_sync() -> int:
    from grader.settings import load_grading, load_settings, support_policy
    from grader.sinks.redis import SupportQueues, shown
    from grader.sinks.redissync import main

    settings = load_settings()
    grading = load_grading(settings)
    if not settings.redis_url:
        raise GraderError("setting redis_url (GRADER_REDIS_URL): empty, so there are no "
                          "support queues to write")
    try:
        queues = SupportQueues(settings.redis_url, settings.redis_prefix,
                               support_policy(settings, grading), settings.redis_files)
    except ValueError as exc:
        raise GraderError(f"setting support_policy (GRADER_SUPPORT_POLICY): {exc}") from None
    _reach(settings)
    print(f"grader: support queues in Redis at {shown(settings.redis_url)} ...",
          file=sys.stderr, flush=True)
    return main(settings, queues)


def _reach(settings: Settings) -> None:
    """Say where we connect, then check at once that Kafka takes the settings' credentials.

    A broker that is down, a wrong password or an untrusted certificate is then
    one line within seconds, not a client's retries for 30 s.
    """
    from grader.kafka.admin import reach_kafka

    target = settings.kafka
    print(f"grader: connecting to Kafka at {', '.join(target.servers)} "
          f"({target.security.describe()}) ...", file=sys.stderr, flush=True)
    reach_kafka(target)


def _produce(path: Path) -> int:
    from grader.core.eventfile import read_lines
    from grader.core.topology import load_topics
    from grader.kafka.admin import ensure_topics
    from grader.kafka.produce import produce
    from grader.settings import load_settings

    settings = load_settings()
    if not path.is_file():
        raise GraderError(f"events file {path} not found")
    _reach(settings)
    ensure_topics(settings.kafka, load_topics(settings.topic_prefix, settings.partitions).values())
    progress = terminal.progress("produce: sent")
    summary = produce(settings.kafka, settings.topic_prefix, read_lines(path), str(path),
                      progress)
    if progress is not None:
        terminal.clear_progress()
    print(summary.line(), file=sys.stderr)
    return 0


def _tick(text: str) -> int:
    from grader.core.clock import TimestampError, format_instant, parse_instant
    from grader.kafka.produce import send_tick
    from grader.settings import load_settings

    try:
        as_of = parse_instant(text)
    except TimestampError as exc:
        raise GraderError(f"--as-of {text!r}: {exc}") from None
    settings = load_settings()
    _reach(settings)
    count = send_tick(settings.kafka, settings.topic_prefix, as_of)
    print(f"tick as of {format_instant(as_of)} sent to {count} partitions", file=sys.stderr)
    return 0
