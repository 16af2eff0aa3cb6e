"""The `grader` command. Every user mistake ends in one line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from grader import __version__, core_kind
from grader.cli import stream as stream_commands
from grader.cli import terminal
from grader.cli import token as tokencmd
from grader.core.clock import TimestampError, format_instant, parse_instant
from grader.core.errors import GraderError, one_line
from grader.core.policy import Policy

if TYPE_CHECKING:
    from grader.offline.whatif import WhatIf


DEV_POLICIES = "abc-100,stars"  # `grader dev` shows two policies side by side


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="grader", description="Streaming customer tier grader.")
    parser.add_argument("--version", action="version",
                        version=f"grader {__version__} (core: {core_kind()})",
                        help="print the version and which grading core runs (compiled or "
                             "pure Python), and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    rp = sub.add_parser("replay", help="grade a JSON-lines file offline")
    rp.add_argument("events", type=Path, help="events file (JSON lines)")
    rp.add_argument("--as-of", required=True, help="RFC 3339 instant T to grade as of")
    rp.add_argument(
        "--policy",
        action="append",
        default=None,
        help="preset name or policy file (repeatable; default: settings)",
    )
    rp.add_argument("--out", required=True, type=Path, help="output directory")
    rp.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="processes to grade with (default: the CPUs this process may use)",
    )
    wi = sub.add_parser("whatif", help="what a candidate policy would do to the population")
    wi.add_argument("events", type=Path, nargs="?", help="events file (JSON lines)")
    wi.add_argument("--as-of", help="RFC 3339 instant T to grade as of (with a file)")
    wi.add_argument("--live", action="store_true",
                    help="from the running workers' state instead of a file")
    wi.add_argument("--current", required=True, help="the policy in use (preset name or file)")
    wi.add_argument("--candidate", required=True, help="the policy to compare (name or file)")
    wi.add_argument("--out", required=True, type=Path, help="output directory")
    wi.add_argument("--workers", type=_positive, default=None,
                    help="processes to grade with (default: the CPUs this process may use)")
    dev = sub.add_parser("dev", help="local broker, Redis, worker and live sample events")
    dev.add_argument("--customers", type=_positive, default=12, help="sample customers")
    dev.add_argument("--duration", type=_positive, default=None,
                     help="stop after this many seconds (default: until Ctrl-C)")
    dev.add_argument("--broker", choices=("tansu", "kafka"), default="tansu",
                     help="the local broker: tansu (default) or Apache Kafka (needs Java)")
    dev.add_argument("--policies", default=None,
                     help="policies to grade under (default: GRADER_POLICIES if set, else "
                          "abc-100,stars)")
    dev.add_argument("--plain", action="store_true",
                     help="print tier changes as lines (default when not a terminal)")
    pol = sub.add_parser("policy", help="policy tools")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    check = pol_sub.add_parser("check", help="validate a policy file and print it")
    check.add_argument("file", help="policy file or preset name")
    stream_commands.register(sub)
    tokencmd.register(sub, _Parser)
    return parser


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grader` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen here, not at exit
        return code
    except BrokenPipeError:  # `grader ... | head -1`: the reader has all it wants
        # The Python docs' recipe (signal.html, "Note on SIGPIPE"): the interpreter's
        # last flush of stdout would fail again, so point stdout at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except GraderError as exc:
        print(f"grader: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("grader: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "replay":
        return _replay(args)
    if args.command == "dev":
        return _dev(args)
    if args.command == "whatif":
        return _whatif(args)
    if args.command in stream_commands.COMMANDS:
        return stream_commands.run(args)
    if args.command == "token":
        return tokencmd.run(args)
    return _policy_check(args)


def _policies(names: list[str] | None) -> tuple[Policy, ...]:
    from grader.settings import load_settings, resolve_policy

    settings = load_settings()
    chosen = names or list(settings.policies)
    return tuple(resolve_policy(name, settings.config_dir) for name in chosen)


def _file_and_as_of(args: argparse.Namespace) -> int:
    """--as-of in microseconds, once it and the events file are checked (one line each)."""
    try:
        as_of = parse_instant(args.as_of)
    except TimestampError as exc:
        raise GraderError(f"--as-of {args.as_of!r}: {exc}") from None
    if not args.events.is_file():
        raise GraderError(f"events file {args.events} not found")
    return as_of


@contextmanager
def _one_line(path: Path) -> Iterator[None]:
    """What can go wrong reading or grading ``path`` as a GraderError (one line)."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield
    except OSError as exc:
        raise GraderError(f"{exc.filename or path}: {exc.strerror or exc}") from None
    except MemoryError:
        raise GraderError(f"{path}: out of memory") from None
    except BrokenProcessPool:
        raise GraderError(f"{path}: a grading process ended abruptly (out of memory?)"
                          ) from None


def _replay(args: argparse.Namespace) -> int:
    from grader.core.eventfile import read_lines
    from grader.core.grading import Grading
    from grader.offline.outputs import check_replaceable
    from grader.offline.replay import OUTPUTS, replay, write_outputs
    from grader.settings import load_settings

    as_of = _file_and_as_of(args)
    try:
        grading = Grading(_policies(args.policy))
    except ValueError as exc:
        raise GraderError(f"--policy: {exc}") from None
    check_replaceable(args.out, OUTPUTS)
    progress = terminal.progress("replay: read")
    now_us = time.time_ns() // 1000
    try:
        with _one_line(args.events):
            result = replay(read_lines(args.events), as_of, grading, now_us, progress,
                            args.workers, warn_days=load_settings().warn_days)
    finally:
        if progress is not None:
            terminal.clear_progress()
    write_outputs(result, args.out)
    print(f"replay as of {format_instant(as_of)}: {result.stats.summary()}", file=sys.stderr)
    return 0


def _whatif(args: argparse.Namespace) -> int:
    from grader.core.eventfile import read_lines
    from grader.offline.outputs import check_replaceable
    from grader.offline.whatif import OUTPUTS, report, what_if, write
    from grader.settings import config_dir, resolve_policy

    if args.live and (args.events is not None or args.as_of is not None):
        raise GraderError("--live reads the workers' state: no events file, no --as-of")
    if not args.live and (args.events is None or args.as_of is None):
        raise GraderError("an events file and --as-of are needed (or --live)")
    current = resolve_policy(args.current, config_dir())
    candidate = resolve_policy(args.candidate, config_dir())
    if Path(current.source).resolve() == Path(candidate.source).resolve():
        raise GraderError(f"--candidate {args.candidate}: the same policy file as --current")
    if (current.name, current.version) == (candidate.name, candidate.version):
        raise GraderError(f"--candidate {args.candidate}: same name and version as --current "
                          f"({current.name} v{current.version}); give the candidate a new "
                          "version")
    if current.currency != candidate.currency:
        raise GraderError(f"--candidate {args.candidate}: currency {candidate.currency} is "
                          f"not --current's {current.currency}")
    check_replaceable(args.out, OUTPUTS)
    if args.live:
        result = _live_what_if(current, candidate)
    else:
        as_of = _file_and_as_of(args)
        with _one_line(args.events):
            result = what_if(list(read_lines(args.events)), as_of, current, candidate,
                             time.time_ns() // 1000, args.workers)
    write(result, args.out)
    print(report(result), end="")
    return 0


def _live_what_if(current: Policy, candidate: Policy) -> WhatIf:
    """Both policies over the workers' current state (their customers changelog)."""
    import asyncio

    from grader.cli.stream import _reach
    from grader.kafka.changelog import read_states
    from grader.offline.whatif import live_refusal, live_what_if
    from grader.settings import load_grading, load_settings

    settings = load_settings()
    active = load_grading(settings)
    why = live_refusal(current, candidate, active)
    if why is not None:
        raise GraderError(why)
    _reach(settings)
    states = asyncio.run(read_states(settings.kafka, settings.topic_prefix,
                                     settings.broker_quirks == "tansu"))
    return live_what_if(list(states.values()), current, candidate)


def _dev(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from grader.devtools.dev import run_dev
    from grader.settings import load_grading, load_settings

    settings = load_settings()
    names = args.policies or os.environ.get("GRADER_POLICIES") or DEV_POLICIES
    policies = tuple(p.strip() for p in names.split(",") if p.strip())
    if not policies:
        raise GraderError("--policies: names at least one policy")
    settings = dataclasses.replace(settings, policies=policies,
                                   support_policy=Path(policies[0]).stem)
    grading = load_grading(settings)
    plain = args.plain or not sys.stdout.isatty()
    return run_dev(args.customers, args.duration, plain, ",".join(settings.policies), args.broker,
                   {p.name: p.tier_names for p in grading.policies})


def _policy_check(args: argparse.Namespace) -> int:
    from grader.cli.policyshow import describe
    from grader.settings import config_dir, resolve_policy

    policy = resolve_policy(args.file, config_dir())
    print(describe(policy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
