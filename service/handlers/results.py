"""What the use cases answer: results in the ledger's words, and the outcome of a command.

A command's result is kept with its idempotency key (encoded before the append, so nothing is
rendered while the append lock is held) together with the position of its last event; a retry
gets the same result and position back, and the HTTP edge renders both the same way each time.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

import msgspec
from msgspec import Struct

from domain.campaigns import Campaign, Offer
from domain.identities import Identity
from domain.lots import Lot
from domain.member_values import Balance, Profile
from domain.rules import BreakdownPart, Rules
from projections.campaigns import VariantResult
from service.store.keys import Keyring

R = TypeVar("R")


class Result(Struct, frozen=True, kw_only=True):
    """Base of the commands' results."""


class MemberState(Result, kw_only=True):
    """A member as a command left it; identity values are masked unless the caller may see
    personal data (decided by the use case, so the kept result holds no more than was shown).
    The identities are kept sealed with the member's key (`keep`): forgetting reaches them."""

    personal_fields: ClassVar[tuple[str, ...]] = ("identities",)
    member_id: UUID
    status: str
    merged_into: UUID | None
    tier: str
    identities: list[Identity] = []
    balance: Balance
    channels: list[str]
    first_activity_at: datetime | None
    last_activity_at: datetime | None
    # On reads of the member view only (a command's answer leaves it out): SPEC §3 segments.
    segments: list[str] | None = None


class Earned(Result):
    member_id: UUID
    event_id: UUID
    points: int
    breakdown: list[BreakdownPart]
    rules_version: int
    available_at: datetime
    expires_at: datetime | None
    balance: Balance


class Redeemed(Result):
    """A redemption; `redemption_id` is the id of its `points_redeemed` event."""

    member_id: UUID
    redemption_id: UUID
    points: int
    reward_ref: str | None
    order_ref: str | None
    balance: Balance


class RulesState(Result):
    rules_version: int
    rules: Rules


class Quote(Result):
    member_id: UUID
    points: int
    breakdown: list[BreakdownPart]
    rules_version: int
    tier: str


class CampaignState(Result):
    """A campaign and where it stands (`scheduled`, `live`, `finished` or `ended`)."""

    campaign_id: UUID
    campaign: Campaign
    status: str
    started_at: datetime
    ended_at: datetime | None


class MemberOffers(Struct, frozen=True, kw_only=True):
    member_id: UUID
    at: datetime
    offers: list[Offer]


class CampaignResults(Struct, frozen=True, kw_only=True):
    campaign_id: UUID
    name: str
    variants: list[VariantResult]


class Reversed(Result):
    """A refund (`points` negative: taken back) or an undone redemption (positive)."""

    member_id: UUID
    event_id: UUID
    points: int
    balance: Balance


class Held(Result):
    member_id: UUID
    hold_id: UUID
    points: int
    expires_at: datetime
    balance: Balance


class HoldClosed(Result):
    """A hold captured (`captured` points spent, the rest released) or released."""

    member_id: UUID
    hold_id: UUID
    captured: int
    released: int
    balance: Balance


class Adjusted(Result):
    member_id: UUID
    event_id: UUID
    points: int
    balance: Balance


class Transferred(Result):
    """A transfer; `balance` is the sender's."""

    member_id: UUID
    to_member_id: UUID
    points: int
    balance: Balance


class Settled(Result):
    """What time had made due for the member: the events recorded (0: nothing was due)."""

    member_id: UUID
    events: int


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """A command's result and the position of its last event; `replayed` when it is the first
    outcome of the same request, answered again."""

    status: int
    result: R
    position: int
    replayed: bool = False


# A kept result starts with this byte; records written before results were kept hold the HTTP
# body itself (JSON, so never this byte), and are answered as they are while they last (24 h).
KEPT = b"R"
# A kept result with personal fields starts with this one: `_Sealed`, those fields sealed with
# the member's data key (AES-GCM), so that forgetting the member makes them unreadable here too.
SEALED = b"S"
_encoder = msgspec.json.Encoder()


class _Sealed(Struct, frozen=True):
    member_id: UUID
    result: dict[str, Any]  # without its personal fields
    sealed: str | None  # base64 of the personal fields (JSON), sealed; None: nothing was kept


def keep(result: Result, key: bytes | None = None) -> bytes:
    """The bytes an idempotency record keeps of a result; personal fields sealed with `key` (the
    data key of the result's member; without one they are not kept at all)."""
    personal: tuple[str, ...] = getattr(type(result), "personal_fields", ())
    if not personal:
        return KEPT + _encoder.encode(result)
    member_id: UUID = result.member_id  # type: ignore[attr-defined]
    fields = msgspec.to_builtins(result)
    hidden = {name: fields.pop(name) for name in personal}
    sealed = None
    if key is not None:
        sealed = base64.b64encode(Keyring.encrypt(key, member_id, _encoder.encode(hidden))).decode()
    return SEALED + _encoder.encode(_Sealed(member_id, fields, sealed))


def kept_member(data: bytes) -> UUID | None:
    """The member whose key opens this kept result (None: nothing in it is sealed)."""
    if data[:1] != SEALED:
        return None
    return msgspec.json.decode(data[1:], type=_Sealed).member_id


def kept(data: bytes, result_type: type[R], key: bytes | None = None) -> R | bytes:
    """A kept result, or the raw bytes of an older record (an HTTP body). Sealed fields are
    opened with `key`; without it (the member was forgotten) they read as their defaults."""
    if data[:1] == KEPT:
        return msgspec.json.decode(data[1:], type=result_type)
    if data[:1] != SEALED:
        return data
    record = msgspec.json.decode(data[1:], type=_Sealed)
    fields = dict(record.result)
    if key is not None and record.sealed is not None:
        plain = Keyring.decrypt(key, record.member_id, base64.b64decode(record.sealed))
        fields.update(msgspec.json.decode(plain))
    return msgspec.json.decode(_encoder.encode(fields), type=result_type)


class BalanceAt(Struct, frozen=True, kw_only=True):
    member_id: UUID
    as_of: datetime
    balance: Balance


class HistoryItem(Struct, frozen=True, kw_only=True):
    position: int
    event_id: UUID
    stream_version: int
    type: str
    channel: str | None
    points: int | None  # signed: what the event did to the member's points
    occurred_at: datetime
    recorded_at: datetime


class History(Struct, frozen=True, kw_only=True):
    member_id: UUID
    events: list[HistoryItem]
    next_after: int | None


class LiveEvent(Struct, frozen=True, kw_only=True):
    """One event of the log as the live stream shows it: what a member's history shows of it,
    and whose it is (None: the program's). No personal data: the log is read without keys."""

    position: int
    event_id: UUID
    member_id: UUID | None
    stream_version: int
    type: str
    channel: str | None
    points: int | None  # signed, as in the history
    occurred_at: datetime
    recorded_at: datetime


class MemberLots(Struct, frozen=True, kw_only=True):
    """A member's lots now (soonest-expiring first, as they are spent), with the time they were read at."""

    member_id: UUID
    as_of: datetime
    lots: list[Lot]


class ExportedEvent(Struct, frozen=True, kw_only=True):
    """One event of a member's export: its columns and its whole payload, decrypted."""

    member_id: UUID  # the stream (the member, or a member merged into it)
    position: int
    event_id: UUID
    stream_version: int
    type: str
    channel: str | None
    occurred_at: datetime
    recorded_at: datetime
    data: dict[str, Any]


class MemberExport(Struct, frozen=True, kw_only=True):
    """Everything held about a member (a forgotten one's: amounts, no personal data)."""

    member_id: UUID
    status: str
    merged_into: UUID | None
    merged_from: list[UUID]
    tier: str
    identities: list[Identity]
    profile: Profile | None
    balance: Balance
    channels: list[str]
    enrolled_at: datetime
    first_activity_at: datetime | None
    last_activity_at: datetime | None
    exported_at: datetime
    events: list[ExportedEvent]
