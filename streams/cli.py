"""The ``profilestream`` command: the worker and operator tools.

``profilestream worker`` runs a worker. ``segments`` and ``contact`` talk to a
running worker over its HTTP API (``--url``, ``--token``; defaults from
``PROFILESTREAM_URL`` and ``PROFILESTREAM_TOKEN``). ``publish``, ``generate``,
``tail`` and ``lag`` talk to Kafka; their ``--bootstrap``, ``--topic-prefix``
and ``--group`` default from the worker's own variables ``KAFKA_BOOTSTRAP``,
``TOPIC_PREFIX`` and ``CONSUMER_GROUP``, and ``generate``, ``tail`` and ``lag``
connect with the worker's ``KAFKA_SECURITY_PROTOCOL`` / SASL / SSL settings
(``docs/tools.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _env_default(field: str) -> str:
    """The worker's own default for a setting, overridden by its variable."""
    from streams.settings import Settings

    default = Settings.model_fields[field].default
    return os.environ.get(field.upper(), str(default))


def _kafka(args: argparse.Namespace) -> dict[str, Any]:
    """The worker's Kafka connection options (security settings included, from
    the same variables), with the address from ``--bootstrap``."""
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        settings = Settings(kafka_bootstrap=args.bootstrap)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"{args.command}: invalid settings: {problems}") from exc
    return settings.kafka_client_options()


def _run_until_interrupted(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, T]],
) -> T:
    """Run ``main(stop)``; the first Ctrl-C (or SIGTERM) sets ``stop`` so the
    tool can finish cleanly, a second Ctrl-C interrupts at once."""

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            stop.set()
            loop.remove_signal_handler(signum)  # a second one acts as usual

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        return await main(stop)

    return asyncio.run(runner())


def run_worker() -> None:
    import faust

    from streams.app import create_app
    from streams.settings import Settings

    settings = Settings()
    app, components = create_app(settings)
    components.ingest.collector.start()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


async def _request(
    args: argparse.Namespace, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {args.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.request(
            method,
            args.url.rstrip("/") + path,
            data=None if body is None else orjson.dumps(body),
            timeout=aiohttp.ClientTimeout(total=600),
        ) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


def _print(status: int, data: Any) -> int:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if status < 400 else 1


async def _create_with_progress(
    args: argparse.Namespace, base: str, body: Any
) -> tuple[int, Any]:
    """POST the segment; while the worker evaluates every contact, poll the
    list and show the walk's progress on stderr."""
    request = asyncio.ensure_future(_request(args, "POST", base, body))
    shown = False
    while True:
        done, _ = await asyncio.wait({request}, timeout=1.0)
        if done:
            break
        _, listing = await _request(args, "GET", base)
        for segment in listing.get("segments", []) if isinstance(listing, dict) else []:
            progress = segment.get("progress")
            if progress and segment.get("name") == body.get("name"):
                sys.stderr.write(
                    f"\revaluating {progress['done']:,} of {progress['total']:,} "
                    "contacts"
                )
                shown = True
    if shown:
        sys.stderr.write("\n")
    return await request


def _segments(args: argparse.Namespace) -> int:
    base = f"/v1/tenants/{args.tenant}/segments"
    if args.action == "list":
        return _print(*asyncio.run(_request(args, "GET", base)))
    if args.action == "create":
        body = orjson.loads(Path(args.file).read_bytes())
        return _print(*asyncio.run(_create_with_progress(args, base, body)))
    if args.action == "preview":
        rule = orjson.loads(Path(args.file).read_bytes())
        rule = rule.get("rule", rule)
        body = {"rule": rule, "limit": args.limit}
        return _print(*asyncio.run(_request(args, "POST", f"{base}/preview", body)))
    if args.action == "members":
        return _print(
            *asyncio.run(_request(args, "GET", f"{base}/{args.segment}/members"))
        )
    if args.action == "delete":
        return _print(*asyncio.run(_request(args, "DELETE", f"{base}/{args.segment}")))
    raise SystemExit(f"unknown action {args.action}")


def _contact(args: argparse.Namespace) -> int:
    path = f"/v1/tenants/{args.tenant}/contacts/{args.contact}"
    return _print(*asyncio.run(_request(args, "GET", path)))


def _publish(args: argparse.Namespace) -> int:
    from streams.demo import publish, publish_file, sample_events

    if (args.file is None) == (not args.sample):
        raise SystemExit("publish: give either a FILE or --sample")
    if args.sample:
        events = sample_events(args.tenant)
        count = asyncio.run(publish(events, args.bootstrap, args.topic_prefix))
    else:
        count = asyncio.run(publish_file(args.file, args.bootstrap, args.topic_prefix))
    print(f"published {count} events", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from streams.tools import (
        EventGenerator,
        GenerateResult,
        Progress,
        generate,
        parse_instant,
    )

    if args.rate < 0 or (args.count is not None and args.count < 0):
        raise SystemExit("generate: --rate and --count must not be negative")
    try:
        at = parse_instant(args.at) if args.at else None
    except ValueError as exc:
        raise SystemExit(f"generate: --at: {exc}") from exc
    tenants = [f"{args.tenant_prefix}-{i}" for i in range(1, args.tenants + 1)]
    try:
        generator = EventGenerator(
            tenants,
            args.contacts,
            seed=args.seed,
            spread_seconds=args.spread_hours * 3600,
        )
    except ValueError as exc:
        raise SystemExit(f"generate: {exc}") from exc
    kafka = _kafka(args)
    progress = None if args.quiet else Progress(sys.stderr, args.count)

    async def main(stop: asyncio.Event) -> GenerateResult:
        return await generate(
            generator,
            kafka,
            prefix=args.topic_prefix,
            rate=args.rate or None,
            count=args.count,
            at=at,
            stop=stop,
            progress=progress,
        )

    result = _run_until_interrupted(main)
    print(result.summary(), file=sys.stderr)
    return 0


def _tail(args: argparse.Namespace) -> int:
    from streams.kafka import MEMBERSHIP_TOPIC
    from streams.tools import tail

    topic = args.topic_prefix + MEMBERSHIP_TOPIC
    kafka = _kafka(args)

    def ready(message: str) -> None:
        print(message + "; Ctrl-C to stop", file=sys.stderr, flush=True)

    async def main(stop: asyncio.Event) -> int:
        return await tail(
            kafka,
            topic,
            sys.stdout,
            from_beginning=args.from_beginning,
            tenant=args.tenant,
            max_records=args.max,
            stop=stop,
            on_ready=ready,
        )

    try:
        _run_until_interrupted(main)
    except LookupError as exc:
        print(f"tail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `profilestream tail | head`: the reader left. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _lag(args: argparse.Namespace) -> int:
    from streams.kafka import INPUT_TOPICS
    from streams.tools import consumer_lag

    topics = [args.topic_prefix + t for t in INPUT_TOPICS]
    report = asyncio.run(consumer_lag(_kafka(args), args.group, topics))
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        sys.stdout.write(report.table())
    return 0


def _config(args: argparse.Namespace) -> int:
    from streams.settings import settings_reference

    sys.stdout.write(settings_reference())
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from schemas.generate import write_schemas

    for path in write_schemas():
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="profilestream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker (settings from the environment)")

    def api(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get("PROFILESTREAM_URL", "http://127.0.0.1:6066"),
        )
        p.add_argument("--token", default=os.environ.get("PROFILESTREAM_TOKEN", ""))
        p.add_argument("--tenant", required=True)

    seg = sub.add_parser("segments", help="create, list, preview, members, delete")
    api(seg)
    seg.add_argument(
        "action", choices=["list", "create", "preview", "members", "delete"]
    )
    seg.add_argument("--file", help="JSON definition (create) or rule (preview)")
    seg.add_argument("--segment", help="segment id (members, delete)")
    seg.add_argument("--limit", type=int, default=20)

    contact = sub.add_parser("contact", help="show a contact's signals and segments")
    api(contact)
    contact.add_argument("contact")

    def kafka(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bootstrap",
            default=_env_default("kafka_bootstrap"),
            help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP)",
        )
        p.add_argument(
            "--topic-prefix",
            default=_env_default("topic_prefix"),
            help="put in front of every topic name (default: $TOPIC_PREFIX)",
        )

    pub = sub.add_parser(
        "publish", help="publish events from a JSON-lines file or the sample stream"
    )
    pub.add_argument("file", nargs="?", help="JSON lines, one event per line")
    pub.add_argument(
        "--sample",
        action="store_true",
        help="publish the demo's sample stream (two contacts, recent days)",
    )
    pub.add_argument("--tenant", default="demo", help="tenant of --sample")
    kafka(pub)

    gen = sub.add_parser(
        "generate", help="publish generated valid events at a steady rate"
    )
    gen.add_argument(
        "--rate",
        type=float,
        default=100,
        help="events per second, 0 for unthrottled (default: 100)",
    )
    gen.add_argument(
        "--count", type=int, default=None, help="stop after this many (default: Ctrl-C)"
    )
    gen.add_argument(
        "--tenants", type=int, default=1, help="number of tenants (default: 1)"
    )
    gen.add_argument(
        "--contacts", type=int, default=1000, help="contacts per tenant (default: 1000)"
    )
    gen.add_argument(
        "--tenant-prefix",
        default="tenant",
        help="tenants are named PREFIX-1 .. PREFIX-T (default: tenant)",
    )
    gen.add_argument(
        "--at",
        help="RFC 3339 instant the events occur at instead of the system clock "
        "(for a worker on the manual test clock)",
    )
    gen.add_argument(
        "--spread-hours",
        type=float,
        default=0.0,
        help="spread occurred_at over this many hours before now (default: 0)",
    )
    gen.add_argument("--seed", type=int, help="random seed of the content")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    kafka(gen)

    tail = sub.add_parser(
        "tail", help="print segments.membership changes, one line each"
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the earliest record"
    )
    tail.add_argument("--tenant", help="only this tenant's changes")
    tail.add_argument(
        "--max", type=int, default=None, help="exit after printing this many"
    )
    kafka(tail)

    lag = sub.add_parser(
        "lag", help="committed offset, end offset and lag of the workers' group"
    )
    lag.add_argument(
        "--group",
        default=_env_default("consumer_group"),
        help="consumer group (default: $CONSUMER_GROUP)",
    )
    lag.add_argument("--json", action="store_true", help="print JSON")
    kafka(lag)

    sub.add_parser("schemas", help="write the JSON Schema files under schemas/")
    sub.add_parser("config", help="print the configuration reference (Markdown)")

    args = parser.parse_args(argv)
    if args.command in ("generate", "tail", "lag"):
        from streams.logs import configure as configure_logging

        configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    if args.command == "worker":
        sys.argv = [sys.argv[0], "worker"]
        run_worker()
        return 0
    handlers = {
        "segments": _segments,
        "contact": _contact,
        "publish": _publish,
        "generate": _generate,
        "tail": _tail,
        "lag": _lag,
        "schemas": _schemas,
        "config": _config,
    }
    if args.command not in ("generate", "tail", "lag"):
        return handlers[args.command](args)
    from aiokafka.errors import KafkaError

    try:
        return handlers[args.command](args)
    except KafkaError as exc:
        # Unreachable broker, refused credentials, ...: one line, no traceback.
        print(f"{args.command}: Kafka at {args.bootstrap}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
