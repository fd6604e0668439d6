"""`ledger events`: publish lifecycle events, run the consumer, watch what is applied, handle dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from ledger.cli.common import EXIT_OK, EXIT_USAGE, error, open_input_file, print_json, read_input_file
from ledger.config import Settings, mask_url
from ledger.core.errors import InvalidRequest, LedgerError


def register(subcommands: Any) -> list[argparse.ArgumentParser]:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "events",
        help="publish lifecycle events, consume them, tail what is applied, manage dead letters",
        description="Lifecycle events on NATS JetStream (stream LEDGER_EVENTS, subjects "
        "ledger.events.<host>.<kind>.<action>). See docs/events.md for the contract.",
    )
    actions = parser.add_subparsers(dest="events_action", metavar="ACTION")
    actions.required = True

    publish = actions.add_parser("publish", help="publish events from a JSON-lines file (or - for stdin)")
    publish.add_argument("file", help="a file of event envelopes, one JSON object per line; - reads stdin")
    publish.add_argument(
        "--as-host",
        metavar="HOST",
        help="publish every event for HOST instead of the host in each line (event ids get HOST as a "
        'prefix, so one file can feed several hosts), e.g. --as-host "$(hostname -s)"',
    )

    consume = actions.add_parser("consume", help="run the event consumer (apply events to the database)")
    consume.add_argument("--durable", default="ledger", help="durable consumer name (default: ledger)")
    consume.add_argument("--batch", type=int, default=128, help="events fetched and committed together")

    tail = actions.add_parser("tail", help="print what the consumer applies, live (one JSON object a line)")
    tail.add_argument("--host", default="*", help="only this host's events")
    tail.add_argument("--count", type=int, default=0, help="stop after this many (default: run until ^C)")

    dead = actions.add_parser("dead-letters", help="list, show or replay events that could not be applied")
    dead.add_argument(
        "what",
        nargs="?",
        default="list",
        choices=["list", "show", "replay"],
        help="list them (the default), show one's payload, or replay one",
    )
    dead.add_argument("id", nargs="?", type=int, help="dead letter id (show, replay)")
    dead.add_argument("--all", action="store_true", help="list replayed ones too")
    dead.add_argument(
        "--limit", type=int, default=100, help="list at most this many, newest first (default 100)"
    )
    dead.add_argument(
        "--after", type=int, default=None, metavar="ID", help="list the ones after (older than) this id"
    )
    dead.add_argument("--payload", type=Path, help="replay this corrected payload instead of the stored one")
    dead.add_argument("--json", action="store_true", help="print JSON")

    for sub in (publish, consume, tail, dead):
        sub.set_defaults(handler=run)
    return [publish, consume, tail, dead]


def _nats_url(settings: Settings) -> str:
    """--nats-url / LEDGER_NATS_URL, else the NATS of a `ledger serve` running on this data dir."""
    from ledger.client import nats_url_for

    return nats_url_for(settings)


def run(args: argparse.Namespace, settings: Settings) -> int:
    action = args.events_action
    if action == "dead-letters":
        return _dead_letters(args, settings)
    if action == "publish":
        return asyncio.run(_publish(args.file, settings, args.as_host))
    if action == "consume":
        return asyncio.run(_consume(args, settings))
    return asyncio.run(_tail(args, settings))


async def _publish(path: str, settings: Settings, as_host: str | None) -> int:
    from ledger.bus.connect import connect
    from ledger.bus.jetstream import ensure_stream, stream_config
    from ledger.bus.publisher import publish_event
    from ledger.events.contract import InvalidEvent

    # opened before connecting: a missing file is the user's to fix, whatever NATS is doing
    stream = sys.stdin.buffer if path == "-" else open_input_file(Path(path), "events file")
    try:
        nc = await connect(_nats_url(settings), settings, name="ledger-publish", reconnect_forever=False)
    except BaseException:
        if stream is not sys.stdin.buffer:
            stream.close()
        raise
    published = duplicates = 0
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream_config())
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                envelope = json.loads(line)
                if as_host is not None and isinstance(envelope, dict):
                    envelope = {**envelope, "host": as_host, "id": f"{as_host}-{envelope.get('id')}"}
                ack = await publish_event(js, envelope)
            except (ValueError, InvalidEvent) as exc:  # not UTF-8, not JSON, or not a valid event
                error(f"{path}:{number}: {exc}")
                return EXIT_USAGE
            published += 1
            duplicates += 1 if ack.duplicate else 0
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        await nc.flush()
        await nc.close()
    print(f"published {published} events" + (f" ({duplicates} already in the stream)" if duplicates else ""))
    return EXIT_OK


async def _consume(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.bus.connect import connect
    from ledger.bus.consumer import EventConsumer
    from ledger.local import open_writer

    url = _nats_url(settings)
    ledger = open_writer(settings)
    try:
        nc = await connect(url, settings, name="ledger-consumer")
    except BaseException:
        ledger.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = EventConsumer(nc, ledger, durable=args.durable, batch_size=args.batch)
    try:
        await consumer.start()
        print(f"consuming events into {mask_url(settings.database_url)}", flush=True)
        await consumer.run(stop)
    finally:
        await consumer.close()
        await nc.close()
        ledger.close()
    return EXIT_OK


async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.bus.connect import connect
    from ledger.bus.consumer import APPLIED_SUBJECT

    nc = await connect(_nats_url(settings), settings, name="ledger-tail", reconnect_forever=False)
    done = asyncio.Event()
    seen = 0

    async def show(msg: Any) -> None:
        nonlocal seen
        if args.count and seen >= args.count:
            return  # drain still delivers what was in flight
        print(msg.data.decode(), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    host = args.host if args.host != "*" else "*"
    await nc.subscribe(f"{APPLIED_SUBJECT}.{host}", cb=show)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await nc.close()
    return EXIT_OK


def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    if args.what == "list":
        return _list_dead_letters(args, settings)
    if args.id is None:
        error(f"dead-letters {args.what} needs an id (see `ledger events dead-letters list`)")
        return EXIT_USAGE
    if args.what == "show":
        from ledger.local import open_reader

        ledger = open_reader(settings)
        try:
            letter = ledger.letters.get(args.id)
        finally:
            ledger.close()
        print_json(letter.to_dict(with_payload=True))
        return EXIT_OK
    return _replay(args, settings)


def _list_dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise InvalidRequest("--limit must be at least 1")
    from ledger.local import open_reader

    ledger = open_reader(settings)
    try:
        letters = ledger.letters.page(include_replayed=args.all, limit=args.limit, before=args.after)
        total = ledger.letters.count(include_replayed=args.all)
    finally:
        ledger.close()
    following = letters[-1].id if len(letters) == args.limit else None
    if args.json:
        print_json({"total": total, "dead_letters": [d.to_dict() for d in letters], "next_after": following})
        return EXIT_OK
    if total == 0:
        print("no dead letters")
        return EXIT_OK
    which = "dead letters" if args.all else "dead letters not yet replayed"
    print(f"{total} {which}" + (f"; these {len(letters)} after id {args.after}" if args.after else ""))
    for d in letters:
        replayed = " (replayed)" if d.replayed_at else ""
        print(f"{d.id:>6}  seq {d.stream_seq}  {d.subject}  {d.reason}{replayed}")
    if following is not None:
        print(f"more: ledger events dead-letters --after {following}")
    return EXIT_OK


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.events.apply import apply_event
    from ledger.events.contract import parse_event
    from ledger.local import open_writer

    corrected = read_input_file(args.payload, "--payload file") if args.payload else None
    ledger = open_writer(settings)
    try:
        letter = ledger.letters.get(args.id)
        payload = corrected if corrected is not None else letter.payload
        try:
            event = parse_event(payload, letter.subject or None)
            result = apply_event(ledger, event, None)
        except LedgerError as exc:
            error(f"dead letter {letter.id} still cannot be applied: {exc.message}")
            return EXIT_USAGE
        ledger.letters.mark_replayed(letter.id)
    finally:
        ledger.close()
    print(f"dead letter {letter.id}: {result.outcome} ({event.type} {result.entity_id} v{result.version})")
    return EXIT_OK
