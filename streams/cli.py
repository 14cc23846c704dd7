"""The ``profilestream`` command: the worker and operator tools.

``profilestream worker`` runs a worker. The other subcommands talk to a
running worker over its HTTP API (``--url``, ``--token``; defaults from
``PROFILESTREAM_URL`` and ``PROFILESTREAM_TOKEN``) or publish events to Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)


def run_worker() -> None:
    import faust

    from streams.app import create_app
    from streams.settings import Settings

    settings = Settings()
    app, _ = create_app(settings)
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


def _segments(args: argparse.Namespace) -> int:
    base = f"/v1/tenants/{args.tenant}/segments"
    if args.action == "list":
        return _print(*asyncio.run(_request(args, "GET", base)))
    if args.action == "create":
        body = orjson.loads(Path(args.file).read_bytes())
        print("creating and evaluating over every contact...", file=sys.stderr)
        return _print(*asyncio.run(_request(args, "POST", base, body)))
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
    from streams.demo import publish_file

    count = asyncio.run(publish_file(args.file, args.bootstrap, args.topic_prefix))
    print(f"published {count} events", file=sys.stderr)
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

    pub = sub.add_parser("publish", help="publish events from a JSON-lines file")
    pub.add_argument("file")
    pub.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    pub.add_argument("--topic-prefix", default=os.environ.get("TOPIC_PREFIX", ""))

    sub.add_parser("schemas", help="write the JSON Schema files under schemas/")
    sub.add_parser("config", help="print the configuration reference (Markdown)")

    args = parser.parse_args(argv)
    if args.command == "worker":
        sys.argv = [sys.argv[0], "worker"]
        run_worker()
        return 0
    handlers = {
        "segments": _segments,
        "contact": _contact,
        "publish": _publish,
        "schemas": _schemas,
        "config": _config,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
