"""Follow the loyalty ledger's events from another service: a durable JetStream pull consumer.

    pip install nats-py msgspec
    python subscriber_example.py --url nats://127.0.0.1:4222 --durable my-service
    python subscriber_example.py --durable tiers --type tier_changed
    python subscriber_example.py --durable one-member --member 0b7e...-...

The consumer is durable: the server remembers what it acknowledged, so a restart continues where
it left off, and a new name replays the whole history from the start of the stream. Delivery is
at least once: an event handled but not yet acknowledged when the process dies comes again, so
make handling idempotent (remember the last `position` handled, or the event `id`s).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


class CloudEvent(msgspec.Struct):
    """The fields of the envelope this service reads (others are ignored)."""

    id: str
    type: str  # loyalty.<event_type>.v1
    subject: str  # the member id, or "program"
    time: str
    position: int  # global order of the ledger: a checkpoint
    streamversion: int  # order within one member: 1, 2, 3 ...
    data: dict[str, Any]
    channel: str | None = None


def subject_filter(
    prefix: str = "loyalty.events", event_type: str | None = None, member: str | None = None
) -> str:
    """`loyalty.events.<event_type>.<member_id>` with `*` for what is not fixed."""
    return f"{prefix}.{event_type or '*'}.{member or '*'}"


async def consume(
    url: str,
    *,
    durable: str,
    handle: Callable[[CloudEvent], Any],
    stream: str = "LOYALTY",
    subjects: list[str] | None = None,
    stop_when_idle: bool = False,
    idle_timeout: float = 0.5,
    batch: int = 100,
) -> None:
    """Deliver the stream's events to `handle` in order, acknowledging each once handled."""
    subjects = subjects or [subject_filter()]
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream()
        # Created if new, kept if it exists with this configuration; DeliverPolicy.ALL makes a
        # new consumer start at the first event ever published.
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                # One subject works on any server; several need nats-server 2.10 or later.
                **({"filter_subject": subjects[0]} if len(subjects) == 1 else {"filter_subjects": subjects}),
            ),
        )
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        try:
            while True:
                try:
                    messages = await sub.fetch(batch, timeout=idle_timeout)
                except TimeoutError:  # nothing new (fetch says so this way; nats' own subclasses it)
                    if stop_when_idle:
                        return
                    continue
                for i, msg in enumerate(messages):
                    event = msgspec.json.decode(msg.data, type=CloudEvent)
                    result = handle(event)
                    if inspect.isawaitable(result):
                        await result
                    if i == len(messages) - 1:
                        # Wait for the server to confirm the batch's last ack (acks are
                        # processed in order), so a restart right after never sees it again.
                        await msg.ack_sync()
                    else:
                        await msg.ack()
        finally:
            # Unsubscribe before closing: drain() can hang after a timed-out fetch.
            await sub.unsubscribe()
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="LOYALTY")
    parser.add_argument("--prefix", default="loyalty.events")
    parser.add_argument("--durable", required=True, help="the consumer's name (one per subscribing service)")
    parser.add_argument("--type", help="only this event type, e.g. points_earned")
    parser.add_argument("--member", help="only this member's events (a member id)")
    parser.add_argument("--once", action="store_true", help="stop when caught up")
    args = parser.parse_args()

    def show(event: CloudEvent) -> None:
        print(f"{event.position:>10} {event.type:<36} {event.subject} v{event.streamversion}")

    asyncio.run(
        consume(
            args.url,
            durable=args.durable,
            handle=show,
            stream=args.stream,
            subjects=[subject_filter(args.prefix, args.type, args.member)],
            stop_when_idle=args.once,
        )
    )


if __name__ == "__main__":
    main()
