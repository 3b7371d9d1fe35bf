"""CPU cost of one earn's domain decision on a member with a long history, in-process (no I/O):
`Member.earn_purchase` under the default rules plus the 5 campaigns `loyalty bench --campaigns 5`
starts, then the balance the answer carries, as a batch item's decision does. The member first
earns HISTORY times (not timed: that many lots and accruals), then EARNS more are timed one by one
(time.process_time), the clock a second further each earn. Member ids and order refs are fixed,
so every run decides the same earns. Prints the median of ROUNDS rounds, in microseconds per earn.

    .venv/bin/python scripts/bench/domain_earn.py [ROUNDS] [EARNS] [HISTORY]

Instructions: run it under `valgrind --tool=callgrind` with EARNS 0 and with EARNS N (ROUNDS 1),
and divide the difference of the totals by N (`scripts/bench/domain_earn_callgrind.sh`).
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

NOW = datetime.now(UTC).replace(microsecond=0)


def program_with(n: int) -> Program:
    """The default program with `n` live campaigns of every shape."""
    program = Program.create(at=NOW - timedelta(minutes=5))
    for i, body in enumerate(campaign_bodies(n, None)):
        campaign = msgspec.json.decode(msgspec.json.encode(body), type=Campaign)
        program.start_campaign(
            campaign_id=uuid.UUID(int=i + 1), campaign=campaign, channels=(), at=NOW, channel="ops"
        )
    return program


def earn(member: Member, program: Program, i: int, at: datetime) -> None:
    """One batch item's decision: the earn, then the balance of its answer."""
    member.earn_purchase(
        order_ref=f"O-{i}",
        amount=Decimal("123.45"),
        currency="CNY",
        items=[],
        occurred_at=at,
        at=at,
        channel="bench",
        rules=program.rules,
        rules_version=program.rules_version,
        offers=program.offers(),
        program_version=program.version,
    )
    member.balance(now=at, rules=program.rules)
    member.collect_events()


def one_round(program: Program, earns: int, history: int) -> float:
    """Microseconds per earn of a member with `history` earns behind it (median of `earns`)."""
    member = Member.enrol(
        member_id=uuid.UUID(int=12345),
        identities=[Identity(kind="app_user", value="bench")],
        profile=None,
        channel="bench",
        at=NOW,
        rules=program.rules,
    )
    member.collect_events()
    for i in range(history):
        earn(member, program, i, NOW + timedelta(seconds=i))
    spent: list[float] = []
    for i in range(history, history + earns):
        at = NOW + timedelta(seconds=i)
        started = time.process_time()
        earn(member, program, i, at)
        spent.append(time.process_time() - started)
    return statistics.median(spent) * 1e6 if spent else 0.0


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    earns = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    history = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    program = program_with(5)
    medians = [one_round(program, earns, history) for _ in range(rounds)]
    if earns:
        print(
            f"{rounds} rounds x {earns} earns after {history}: median {statistics.median(medians):.1f} us"
            f" per earn (rounds: {' '.join(f'{m:.1f}' for m in medians)})"
        )


if __name__ == "__main__":
    main()
