"""CPU cost of campaigns in one earn's decision and encoding, in-process (no I/O; CPU time of
this process, so a busy machine inflates it less than wall time): the earn
decided on a member (quote, campaigns, tallies, tier) and its events encoded as the store
encodes them, with the 5 campaigns `loyalty bench --campaigns 5` starts, against none.
Rounds alternate; prints the median microseconds per earn of each and their ratio.

    .venv/bin/python scripts/bench/campaign_cost.py [ROUNDS] [EARNS_PER_ROUND]
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

from devtools.bench.campaigns import campaign_bodies
from domain.campaigns import Campaign
from domain.identities import Identity
from domain.member import Member
from domain.program import Program
from service.store.codec import EventCodec
from service.store.keys import Keyring

NOW = datetime.now(UTC)


def program_with(n: int) -> Program:
    program = Program.create(at=NOW - timedelta(minutes=5))
    for body in campaign_bodies(n, None):
        campaign = msgspec.json.decode(msgspec.json.encode(body), type=Campaign)
        program.start_campaign(
            campaign_id=uuid.uuid4(), campaign=campaign, channels=(), at=NOW, channel="ops"
        )
    return program


def per_earn(program: Program, earns: int, codec: EventCodec, key: bytes) -> float:
    """Microseconds per earn, over members of 20 earns each (a member's history stays short,
    as in `loyalty bench`; enrolment is not timed)."""
    spent = 0.0
    for first in range(0, earns, 20):
        member = Member.enrol(
            member_id=uuid.uuid4(),
            identities=[Identity(kind="app_user", value="bench")],
            profile=None,
            channel="bench",
            at=NOW,
            rules=program.rules,
        )
        member.collect_events()
        started = time.process_time()
        for i in range(first, min(first + 20, earns)):
            member.earn_purchase(
                order_ref=f"O-{i}",
                amount=Decimal("123.45"),
                currency="CNY",
                items=[],
                occurred_at=NOW,
                at=NOW,
                channel="bench",
                rules=program.rules,
                rules_version=program.rules_version,
                offers=program.offers(),
                program_version=program.version,
            )
            for event in member.collect_events():
                codec.encode(event, key)
        spent += time.process_time() - started
    return spent / earns * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    earns = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    keyring = Keyring(bytes(range(32)))
    codec = EventCodec(keyring)
    key, _ = keyring.new_member_key(uuid.uuid4())
    programs = {0: program_with(0), 5: program_with(5)}
    times: dict[int, list[float]] = {0: [], 5: []}
    for r in range(rounds):
        for n in (0, 5) if r % 2 == 0 else (5, 0):
            times[n].append(per_earn(programs[n], earns, codec, key))
    none, five = statistics.median(times[0]), statistics.median(times[5])
    print(f"rounds {rounds} x {earns} earns: none {none:.1f} us, 5 campaigns {five:.1f} us")
    print(f"ratio {five / none:.3f}, difference {five - none:.1f} us per earn")


if __name__ == "__main__":
    main()
