"""The Member aggregate: one member's identities, lots, balance and tier."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import event
from msgspec.structs import replace

from domain import member_events as events
from domain.campaigns import CampaignRecord, CampaignTally, Offer, Purchase, campaign_parts, offers_for
from domain.errors import (
    AlreadyReversed,
    BelowRedemptionMinimum,
    CaptureExceedsHold,
    CurrencyMismatch,
    DuplicateOrder,
    HoldNotActive,
    HoldNotFound,
    IdentityNotLinked,
    InsufficientPoints,
    InvalidAmount,
    InvalidIdentity,
    LastIdentity,
    MemberForgotten,
    MemberMerged,
    MergeRefused,
    OrderNotEarned,
    OverRefund,
    RedemptionNotFound,
    TransferRefused,
)
from domain.events import LedgerAggregate, recorded_directly
from domain.identities import Identity
from domain.ledger_totals import LedgerTotals
from domain.lots import (
    Lot,
    LotDraw,
    add_months,
    apply_draws,
    draw_oldest_first,
    draw_up_to,
    expired_draws,
    is_expired,
    restore,
    spendable_points,
)
from domain.member_values import (
    Accrual,
    Balance,
    EarnResult,
    Expiring,
    Hold,
    MemberStatus,
    OrderRecord,
    Profile,
    PurchaseItem,
    RedeemResult,
    Redemption,
)
from domain.money import check_amount
from domain.rules import BreakdownPart, EarnQuote, Rules, floor_points, quote_purchase, tier_for, tier_named

__all__ = [
    "Accrual",
    "Balance",
    "EarnResult",
    "Member",
    "MemberStatus",
    "OrderRecord",
    "Profile",
    "PurchaseItem",
    "RedeemResult",
]

# One award or redemption beyond this is a typo, not a business decision.
MAX_POINTS = 10**9

_NO_HOLDS: dict[str, Hold] = {}
_NO_REDEMPTIONS: dict[str, Redemption] = {}
_NO_SOURCES: list[UUID] = []
_NO_TALLIES: dict[str, CampaignTally] = {}


class Member(LedgerAggregate):
    """A member of the program: commands decide, `@event` methods only record."""

    # Snapshot state attributes holding personal data; the store encrypts exactly these, and
    # reads them as these values once the member's key is shredded.
    personal_fields = ("identities", "profile")
    shredded_values: ClassVar[dict[str, object]] = {"identities": [], "profile": None}

    MemberEnrolled = events.MemberEnrolled
    IdentityLinked = events.IdentityLinked
    PointsEarned = events.PointsEarned
    PointsRedeemed = events.PointsRedeemed
    TierChanged = events.TierChanged
    IdentityUnlinked = events.IdentityUnlinked
    MembersMerged = events.MembersMerged
    EarnReversed = events.EarnReversed
    RedemptionReversed = events.RedemptionReversed
    PointsHeld = events.PointsHeld
    HoldCaptured = events.HoldCaptured
    HoldReleased = events.HoldReleased
    PointsAdjusted = events.PointsAdjusted
    PointsTransferred = events.PointsTransferred
    PointsExpired = events.PointsExpired
    MemberForgotten = events.MemberForgotten

    # State added after members were first recorded: a snapshot taken before lacks it, so it
    # has class-level defaults (unannotated: not fields of the aggregate's dataclass), and the
    # collections are replaced, never changed in place.
    holds = _NO_HOLDS  # open holds by hold id
    closed_holds = frozenset[str]()
    redemptions = _NO_REDEMPTIONS  # by redemption id (the points_redeemed event id)
    adjusted = 0  # net points added by adjustments
    transferred = 0  # net points received by transfers
    merged_from = _NO_SOURCES  # the members merged into this one (forgotten with it)
    # What each campaign (variant) did for the member, by "<campaign id>/<variant>": caps per
    # member are checked against it, in the member's stream, so they hold under concurrent
    # earns from any channel (the append's expected version).
    campaign_tallies = _NO_TALLIES

    # The running totals of `lots` and `accruals` (domain/ledger_totals.py): derived, never
    # recorded, so a slot, outside the state a snapshot takes and equality compares.
    __slots__ = ("_totals",)

    def __init__(
        self,
        *,
        identities: list[Identity],
        profile: Profile | None,
        tier: str,
        at: datetime,
        channel: str,
    ) -> None:
        # Applies MemberEnrolled; copies lists so later appends never alter the event.
        # Personal fields read as None once the member is forgotten (key shredded).
        self._status: str = MemberStatus.ACTIVE.value
        self.merged_into: UUID | None = None
        self.identities: list[Identity] = list(identities or [])
        self.profile: Profile | None = profile
        self.tier: str = tier
        self.channels: list[str] = [channel]
        self.enrolled_at: datetime = at
        self.first_activity_at: datetime = at
        self.last_activity_at: datetime = at
        # `lots` and `accruals` are only appended to in place; any other change assigns a new
        # list (the running totals follow them by identity and length).
        self.lots: list[Lot] = []
        # Lot ids are a counter of their own (not stream versions): a merge brings in lots
        # that need fresh ids which later earns must never reuse.
        self.last_lot_id = 0
        self.accruals: list[Accrual] = []
        self.orders: dict[str, OrderRecord] = {}
        self.lifetime_earned = 0
        self.lifetime_redeemed = 0
        self.expired = 0
        # Reserved by open holds (the sum of `holds`).
        self.held = 0
        # Points owed after a reversal (or an allowed adjustment) took back points already
        # spent: subtracted from available, so a negative balance is shown, not hidden; new
        # lots pay it off first.
        self.debt = 0

    @property
    def status(self) -> MemberStatus:
        """Whether the member is active, merged or forgotten."""
        return MemberStatus(self._status)

    # -- commands: decide, then record ---------------------------------------------------

    @classmethod
    def enrol(
        cls,
        *,
        member_id: UUID,
        identities: list[Identity],
        profile: Profile | None,
        channel: str,
        at: datetime,
        rules: Rules,
    ) -> Member:
        """Enrol a member with normalised identities, starting in the lowest tier."""
        unique = list(dict.fromkeys((i.kind, i.value) for i in identities))
        if not unique:
            raise InvalidIdentity("a member needs at least one identity", field="identities")
        return cls._create(
            cls.MemberEnrolled,
            id=member_id,
            identities=[Identity(kind=kind, value=value) for kind, value in unique],
            profile=profile,
            tier=tier_for(rules, 0).name,
            at=at,
            channel=channel,
            timestamp=at,
        )

    def link_identity(self, *, identity: Identity, channel: str, at: datetime) -> bool:
        """Link another identity; False (and no event) when it is already this member's."""
        self._check_active()
        if identity in self.identities:
            return False
        self._identity_linked(identity=identity, at=at, channel=channel)
        return True

    def unlink_identity(self, *, identity: Identity, channel: str, at: datetime) -> None:
        """Unlink one of the member's identities; never the last one."""
        self._check_active()
        if identity not in self.identities:
            raise IdentityNotLinked(f"this {identity.kind} identity is not linked to the member")
        if len(self.identities) == 1:
            raise LastIdentity("a member keeps at least one identity")
        self._identity_unlinked(identity=identity, at=at, channel=channel)

    def merge(self, *, source: Member, at: datetime, channel: str, rules: Rules) -> None:
        """Absorb a duplicate member: its lots (with their expiry), totals, qualifying points,
        orders and identities move here; the source is left `merged`. Both streams change."""
        self._check_active()
        if source.id == self.id:
            raise MergeRefused("a member cannot be merged into itself", source_member_id=str(source.id))
        source._check_active()
        if source.held > 0:
            raise MergeRefused(
                "the source member has open holds; capture or release them first",
                source_member_id=str(source.id),
                held=source.held,
            )
        # Fresh ids for the incoming lots (and the orders that point at them), and for the lots
        # the source's redemptions drew (so that undoing one on the target gives its points
        # back into lots of their own).
        old_ids = [lot.lot_id for lot in source.lots]
        old_ids += [d.lot_id for r in source.redemptions.values() for d in r.draws if d.lot_id not in old_ids]
        renumbered = {old: self.last_lot_id + i for i, old in enumerate(dict.fromkeys(old_ids), start=1)}
        absorbed = events.Absorbed(
            lots=[
                Lot(
                    lot_id=renumbered[lot.lot_id],
                    points=lot.points,
                    available_at=lot.available_at,
                    expires_at=lot.expires_at,
                )
                for lot in source.lots
            ],
            last_lot_id=self.last_lot_id + len(renumbered),
            accruals=list(source.accruals),
            # Each order as it stands (what was refunded of it included), pointing at its lot.
            orders={ref: replace(o, lot_id=renumbered.get(o.lot_id, 0)) for ref, o in source.orders.items()},
            lifetime_earned=source.lifetime_earned,
            lifetime_redeemed=source.lifetime_redeemed,
            expired=source.expired,
            debt=source.debt,
            channels=list(source.channels),
            first_activity_at=source.first_activity_at,
            last_activity_at=source.last_activity_at,
            adjusted=source.adjusted,
            transferred=source.transferred,
            redemptions={
                rid: replace(r, draws=[replace(d, lot_id=renumbered[d.lot_id]) for d in r.draws])
                for rid, r in source.redemptions.items()
            },
            campaign_tallies=list(source.campaign_tallies.values()),
        )
        identities = [i for i in source.identities if i not in self.identities]
        self._members_merged(
            source_member_id=source.id,
            target_member_id=self.id,
            identities=identities,
            absorbed=absorbed,
            at=at,
            channel=channel,
        )
        source._members_merged(
            source_member_id=source.id,
            target_member_id=self.id,
            identities=[],
            absorbed=None,
            at=at,
            channel=channel,
        )
        self._evaluate_upgrade(rules=rules, at=at, channel=channel)

    def forget(self, *, at: datetime, channel: str) -> None:
        """Erase the member's personal data at their request: open holds are released first
        (nothing stays reserved on a closed account), then the member is recorded forgotten.
        Points, lots and totals stay (a forgotten member's points still expire on time)."""
        self._check_active()
        for hold_id in sorted(self.holds):
            self._hold_released(
                hold_id=UUID(hold_id),
                points=self.holds[hold_id].points,
                reason="forgotten",
                at=at,
                channel=channel,
            )
        self._member_forgotten(merged_from=list(self.merged_from), at=at, channel=channel)

    def earn_purchase(
        self,
        *,
        order_ref: str,
        amount: Decimal,
        currency: str,
        items: list[PurchaseItem],
        occurred_at: datetime,
        at: datetime,
        channel: str,
        rules: Rules,
        rules_version: int,
        offers: Sequence[CampaignRecord] = (),
        program_version: int = 0,
    ) -> EarnResult:
        """Earn points for a purchase at the member's current tier, with the bonus of every
        campaign in `offers` it matches (at its business time), then re-evaluate tier."""
        quote = self.quote_purchase(
            amount=amount,
            currency=currency,
            items=items,
            rules=rules,
            rules_version=rules_version,
            offers=offers,
            channel=channel,
            occurred_at=occurred_at,
        )
        if order_ref in self.orders:
            raise DuplicateOrder(f"order {order_ref!r} already earned", order_ref=order_ref)
        available_at = occurred_at + timedelta(days=rules.earn.pending_days)
        expires_at = _expiry(rules, occurred_at)
        self._record_points_earned(
            source="purchase",
            order_ref=order_ref,
            amount=amount,
            currency=currency,
            items=list(items),
            points=quote.points,
            breakdown=quote.breakdown,
            rules_version=rules_version,
            tier=quote.tier,
            available_at=available_at,
            expires_at=expires_at,
            occurred_at=occurred_at,
            reason=None,
            at=at,
            channel=channel,
            program_version=program_version,
        )
        return self._after_earn(quote, available_at, expires_at, rules=rules, at=at, channel=channel)

    def award(
        self,
        *,
        points: int,
        reason: str,
        at: datetime,
        channel: str,
        rules: Rules,
        rules_version: int,
        program_version: int = 0,
    ) -> EarnResult:
        """Award points outside a purchase; available at once, and qualifying too."""
        self._check_active()
        _check_points(points)
        breakdown = [BreakdownPart("award", points)]
        quote = EarnQuote(points=points, breakdown=breakdown, rules_version=rules_version, tier=self.tier)
        expires_at = _expiry(rules, at)
        # No pending period: that protects purchases against returns; awards have none.
        self._record_points_earned(
            source="award",
            order_ref=None,
            amount=None,
            currency=None,
            items=[],
            points=points,
            breakdown=breakdown,
            rules_version=rules_version,
            tier=self.tier,
            available_at=at,
            expires_at=expires_at,
            occurred_at=at,
            reason=reason,
            at=at,
            channel=channel,
            program_version=program_version,
        )
        return self._after_earn(quote, at, expires_at, rules=rules, at=at, channel=channel)

    def redeem(
        self,
        *,
        redemption_id: UUID,
        points: int,
        reward_ref: str | None,
        order_ref: str | None,
        at: datetime,
        channel: str,
        rules: Rules,
    ) -> RedeemResult:
        """Spend points from the lots that expire soonest; `redemption_id` names it (the id of
        its event) so that it can be undone."""
        self._check_active()
        self._check_spend(points, at=at, rules=rules)
        draws = draw_oldest_first(self.lots, points, at)
        self._record_points_redeemed(
            points=points,
            draws=draws,
            reward_ref=reward_ref,
            order_ref=order_ref,
            at=at,
            channel=channel,
            redemption_id=redemption_id,
        )
        return RedeemResult(redemption_id=redemption_id, points=points)

    def reverse_earn(
        self, *, order_ref: str, amount: Decimal | None, at: datetime, channel: str, rules: Rules
    ) -> int:
        """Refund a purchase, whole (`amount` None: what remains of it) or in part: take back its
        points in proportion (tier and campaign parts included), never more than it earned.
        Returns the points taken back."""
        self._check_active()
        order = self.orders.get(order_ref)
        if order is None:
            raise OrderNotEarned(
                f"no purchase {order_ref!r} earned points for this member", order_ref=order_ref
            )
        remaining = order.amount - order.refunded
        if remaining <= 0:
            raise OverRefund(f"order {order_ref!r} was refunded in full already", remaining="0")
        refund = remaining if amount is None else amount
        check_amount(refund, order.currency)
        if refund <= 0:
            raise InvalidAmount("amount must be above zero", field="amount")
        if refund > remaining:
            raise OverRefund(
                f"{refund} exceeds what remains of the order ({remaining})", remaining=str(remaining)
            )
        refunded = order.refunded + refund
        # Cumulative, so that partial refunds never round to more than the order earned.
        due = (
            order.points if refunded == order.amount else floor_points(order.points * refunded / order.amount)
        )
        take = max(0, due - order.reversed_points)
        lot = next((lot for lot in self.lots if lot.lot_id == order.lot_id and not is_expired(lot, at)), None)
        drawn = min(take, lot.points) if lot is not None else 0
        draws = [LotDraw(lot.lot_id, drawn, lot.available_at, lot.expires_at)] if lot and drawn else []
        self._earn_reversed(
            order_ref=order_ref,
            amount=refund,
            points=take,
            draws=draws,
            debt=take - drawn,
            at=at,
            channel=channel,
        )
        return take

    def reverse_redemption(self, *, redemption_id: UUID, at: datetime, channel: str) -> int:
        """Undo a redemption: its points go back into the lots they came from, with their
        original expiry. Returns the points given back."""
        self._check_active()
        found = self.redemptions.get(str(redemption_id))
        if found is None:
            raise RedemptionNotFound(
                f"no redemption {redemption_id} of this member", redemption_id=str(redemption_id)
            )
        if found.reversed:
            raise AlreadyReversed(
                f"redemption {redemption_id} was undone already", redemption_id=str(redemption_id)
            )
        self._redemption_reversed(
            redemption_id=redemption_id,
            points=found.points,
            restored=list(found.draws),
            at=at,
            channel=channel,
        )
        return found.points

    def hold(
        self,
        *,
        hold_id: UUID,
        points: int,
        expires_at: datetime,
        order_ref: str | None,
        at: datetime,
        channel: str,
        rules: Rules,
    ) -> None:
        """Reserve points at a checkout until `expires_at`; they leave `available`."""
        self._check_active()
        self._check_spend(points, at=at, rules=rules)
        self._points_held(
            hold_id=hold_id, points=points, expires_at=expires_at, order_ref=order_ref, at=at, channel=channel
        )

    def capture(self, *, hold_id: UUID, points: int | None, at: datetime, channel: str) -> int:
        """Spend a hold, whole (`points` None) or in part (the rest is released). Returns the
        points spent."""
        self._check_active()
        held = self._open_hold(hold_id, at)
        spend = held.points if points is None else points
        if not 0 < spend <= held.points:
            raise CaptureExceedsHold(
                f"a capture takes 1 to {held.points} points of this hold", field="points"
            )
        # The held points were kept out of `available`; their lots are drawn now. Lots that
        # expired while held cannot pay: a capture of more than is still there is refused.
        there = spendable_points(self.lots, at)
        if spend > there:
            raise InsufficientPoints(
                f"{spend} points to capture, {there} of the held points are still there (lots expired)",
                available=there,
            )
        draws = draw_oldest_first(self.lots, spend, at)
        self._hold_captured(
            hold_id=hold_id,
            points=spend,
            draws=draws,
            released=held.points - spend,
            debt=0,
            at=at,
            channel=channel,
        )
        return spend

    def release(self, *, hold_id: UUID, at: datetime, channel: str, expired: bool = False) -> bool:
        """End a hold without spending it. `expired`: the service releasing a hold past its
        time; a hold that is no longer open is then left alone (False), not refused."""
        self._check_active()
        key = str(hold_id)
        held = self.holds.get(key)
        if expired:
            if held is None or held.expires_at > at:
                return False
        else:
            held = self._open_hold(hold_id, at)
        self._hold_released(
            hold_id=hold_id,
            points=held.points,
            reason="expired" if expired else "released",
            at=at,
            channel=channel,
        )
        return True

    def adjust(
        self, *, points: int, reason: str, allow_negative: bool, at: datetime, channel: str, rules: Rules
    ) -> None:
        """Correct the balance: positive points form a new lot; negative ones are drawn
        oldest-expiry first and may take `available` below zero only when `allow_negative`."""
        self._check_active()
        if points == 0 or abs(points) > MAX_POINTS:
            raise InvalidAmount(
                f"points must be non-zero, between -{MAX_POINTS} and {MAX_POINTS}", field="points"
            )
        if points > 0:
            lot = Lot(
                lot_id=self.last_lot_id + 1, points=points, available_at=at, expires_at=_expiry(rules, at)
            )
            self._points_adjusted(
                points=points, reason=reason, lot=lot, draws=[], debt=0, at=at, channel=channel
            )
            return
        wanted = -points
        available = self.balance(now=at, rules=rules).available
        if wanted > available and not allow_negative:
            raise InsufficientPoints(
                f"{wanted} points to take, {available} available (allow_negative to go below zero)",
                available=available,
            )
        draws = draw_up_to(self.lots, min(wanted, max(0, available)), at)
        drawn = sum(d.points for d in draws)
        self._points_adjusted(
            points=points, reason=reason, lot=None, draws=draws, debt=wanted - drawn, at=at, channel=channel
        )

    def transfer(self, *, to: Member, points: int, at: datetime, channel: str, rules: Rules) -> None:
        """Move points to another member: both streams change in one atomic append, and the
        points keep their expiry on the receiving side."""
        self._check_active()
        if to.id == self.id:
            raise TransferRefused("a member cannot transfer points to itself", to_member_id=str(to.id))
        to._check_active()
        _check_points(points)
        available = self.balance(now=at, rules=rules).available
        if points > available:
            raise InsufficientPoints(f"{points} points requested, {available} available", available=available)
        draws = draw_oldest_first(self.lots, points, at)
        lots = [
            Lot(
                lot_id=to.last_lot_id + i,
                points=d.points,
                available_at=d.available_at or at,
                expires_at=d.expires_at,
            )
            for i, d in enumerate(draws, start=1)
        ]
        for side, side_draws, side_lots in ((self, draws, []), (to, [], lots)):
            side._points_transferred(
                from_member_id=self.id,
                to_member_id=to.id,
                points=points,
                draws=side_draws,
                lots=side_lots,
                at=at,
                channel=channel,
            )

    def settle(self, *, at: datetime, channel: str, rules: Rules) -> int:
        """What time alone has made due, recorded: lots past their expiry expire, holds past
        theirs are released, and a tier whose qualifying points stayed below its threshold for
        the grace period goes down. Returns the number of events recorded (0: nothing due)."""
        # A forgotten member's points stay on the books, so they still expire (it has no holds).
        if self._status == MemberStatus.MERGED:
            return 0
        before = len(self.pending_events)
        due = expired_draws(self.lots, at)
        if due:
            self._points_expired(points=sum(d.points for d in due), draws=due, at=at, channel=channel)
        for hold_id, held in sorted(self.holds.items()):
            if held.expires_at <= at:
                self.release(hold_id=UUID(hold_id), at=at, channel=channel, expired=True)
        self._evaluate_downgrade(rules=rules, at=at, channel=channel)
        return len(self.pending_events) - before

    # -- queries -------------------------------------------------------------------------

    def quote_purchase(
        self,
        *,
        amount: Decimal,
        currency: str,
        items: list[PurchaseItem],
        rules: Rules,
        rules_version: int,
        offers: Sequence[CampaignRecord] = (),
        channel: str = "",
        occurred_at: datetime | None = None,
    ) -> EarnQuote:
        """What a purchase would earn this member (the checks of an earn, nothing recorded):
        base, tier, and one part per campaign of `offers` it matches at `occurred_at`."""
        self._check_active()
        _check_purchase(amount, currency, items, rules)
        quote = quote_purchase(rules, rules_version, self.tier, amount)
        base = quote.breakdown[0].points
        if not offers or amount < rules.earn.min_amount:
            return quote  # below the program's minimum a purchase earns nothing at all
        if occurred_at is None:
            raise ValueError("campaigns are matched at the purchase's time: occurred_at is needed")
        purchase = Purchase(
            member_id=self.id,
            tier=quote.tier,
            channel=channel,
            amount=amount,
            items=items,
            occurred_at=occurred_at,
        )
        parts = campaign_parts(
            offers, purchase, points_per_unit=rules.earn.points_per_unit, base=base, paid=self.campaign_paid()
        )
        if not parts:
            return quote
        breakdown = [*quote.breakdown, *parts]
        return replace(quote, points=sum(p.points for p in breakdown), breakdown=breakdown)

    def campaign_offers(self, *, offers: Sequence[CampaignRecord], now: datetime) -> list[Offer]:
        """The campaigns this member is eligible for at `now`, with their variant of each (none
        once merged or forgotten: such a member earns nothing)."""
        if self.status is not MemberStatus.ACTIVE:
            return []
        return offers_for(offers, member_id=self.id, tier=self.tier, now=now, paid=self.campaign_paid())

    def campaign_paid(self) -> dict[UUID, int]:
        """Bonus points each campaign has paid this member so far (net of refunds)."""
        paid: dict[UUID, int] = {}
        for tally in self.campaign_tallies.values():
            paid[tally.campaign_id] = paid.get(tally.campaign_id, 0) + tally.points
        return paid

    def next_balance_change(self, *, after: datetime, rules: Rules) -> datetime | None:
        """The first instant after `after` at which the member changes with no new command: a
        lot unlocks (`available_at`) or expires, an earn leaves the tier window (and, the grace
        period later, a downgrade may fall due), or a hold expires. The service settles the
        member then (see `settle`)."""
        window = timedelta(days=rules.tier_window_days)
        grace = timedelta(days=rules.downgrade_grace_days)
        totals = self._running_totals()
        lots, accruals = totals.lots, totals.accruals.by_time
        holds = [held.expires_at for held in self.holds.values()]
        # What fell due and is not recorded yet (a later event hid it: the lot expired, the
        # hold ran out, before anything settled them) is due now, at the instant it fell due.
        overdue = [i for i in (lots.expiries.first(), *holds) if i is not None and i <= after]
        if overdue:
            return min(overdue)
        # The first of each kind of instant after `after` (an accrual's leaves the window at
        # occurred_at + window: after `after` when occurred_at is after `after - window`).
        leaves = accruals.first_after(after - window)
        settles = accruals.first_after(after - window - grace)
        instants = [
            lots.unlocks.first_after(after),
            lots.expiries.first_after(after),
            None if leaves is None else leaves + window,
            None if settles is None else settles + window + grace,
            *(i for i in holds if i > after),
        ]
        return min((i for i in instants if i is not None), default=None)

    def balance(self, *, now: datetime, rules: Rules) -> Balance:
        """The balance at `now`: locked lots are pending, lots past expiry are expired."""
        totals = self._running_totals()
        spendable, pending, lapsed = totals.lots.split(now)
        # A hold reserves points only until its time (then it is as good as released, before
        # the service records it) and only while they are there (lots can expire under it).
        held = min(sum(h.points for h in self.holds.values() if h.expires_at > now), spendable)
        return Balance(
            available=spendable - held - self.debt,
            pending=pending,
            held=held,
            lifetime_earned=self.lifetime_earned,
            lifetime_redeemed=self.lifetime_redeemed,
            # A lot past its expiry is expired even before the expiry event is recorded.
            expired=self.expired + lapsed,
            qualifying=totals.accruals.after(now - timedelta(days=rules.tier_window_days)),
            tier=self.tier,
            expiring=self.expiring(now=now),
        )

    def expiring(self, *, now: datetime) -> Expiring | None:
        """The next lots to expire after `now` (those sharing the soonest expiry), if any."""
        soonest = self._running_totals().lots.soonest_expiry(now)
        if soonest is None:
            return None
        at, points = soonest
        return Expiring(points=points, at=at)

    def qualifying(self, *, now: datetime, window_days: int) -> int:
        """Points earned with a business time inside the rolling tier window before `now`."""
        return self._running_totals().accruals.after(now - timedelta(days=window_days))

    def _running_totals(self) -> LedgerTotals:
        """The running totals, brought up to date with the lots and accruals."""
        kept: LedgerTotals | None = getattr(self, "_totals", None)  # None: a new or restored member
        self._totals = totals = LedgerTotals.of(kept, self.lots, self.accruals)
        return totals

    # -- helpers of the commands ---------------------------------------------------------

    def _check_spend(self, points: int, *, at: datetime, rules: Rules) -> None:
        """A redemption (or a hold, a redemption in waiting) of `points` is allowed now."""
        _check_points(points)
        minimum = rules.redemption.min_points
        if points < minimum:
            raise BelowRedemptionMinimum(f"redemptions start at {minimum} points", min_points=minimum)
        available = self.balance(now=at, rules=rules).available
        if points > available:
            raise InsufficientPoints(f"{points} points requested, {available} available", available=available)

    def _open_hold(self, hold_id: UUID, at: datetime) -> Hold:
        key = str(hold_id)
        held = self.holds.get(key)
        if held is None:
            if key in self.closed_holds:
                raise HoldNotActive(f"hold {hold_id} was captured or released", hold_id=key)
            raise HoldNotFound(f"no hold {hold_id}", hold_id=key)
        if held.expires_at <= at:
            raise HoldNotActive(f"hold {hold_id} expired at {held.expires_at.isoformat()}", hold_id=key)
        return held

    def _evaluate_downgrade(self, *, rules: Rules, at: datetime, channel: str) -> None:
        # Down only once qualifying points stayed below the tier's threshold for the whole grace
        # period: between earns they only fall, so it is enough to look at the start of the
        # period and just after each earn inside it.
        current = tier_named(rules, self.tier)
        window = rules.tier_window_days
        qualifying = self.qualifying(now=at, window_days=window)
        target = tier_for(rules, qualifying)
        if target.threshold >= current.threshold:
            return
        since = at - timedelta(days=rules.downgrade_grace_days)
        accruals = self._running_totals().accruals
        checks = [since, *accruals.by_time.instants_in(since, at)]
        span = timedelta(days=window)
        if all(accruals.within(t - span, t) < current.threshold for t in checks):
            self._record_tier_changed(
                from_tier=self.tier,
                to_tier=target.name,
                qualifying=qualifying,
                at=at,
                channel=channel,
                reason="downgrade",
            )

    def _check_active(self) -> None:
        if self._status == MemberStatus.ACTIVE:
            return
        detail = f"member {self.id} is {self._status}"
        if self._status == MemberStatus.MERGED:
            raise MemberMerged(
                detail, member_id=str(self.id), status=self._status, merged_into=str(self.merged_into)
            )
        raise MemberForgotten(detail, member_id=str(self.id), status=self._status)

    def _after_earn(
        self,
        quote: EarnQuote,
        available_at: datetime,
        expires_at: datetime | None,
        *,
        rules: Rules,
        at: datetime,
        channel: str,
    ) -> EarnResult:
        lot_id = self.last_lot_id  # the lot of the PointsEarned just recorded
        self._evaluate_upgrade(rules=rules, at=at, channel=channel)
        return EarnResult(
            points=quote.points,
            breakdown=quote.breakdown,
            rules_version=quote.rules_version,
            available_at=available_at,
            expires_at=expires_at,
            lot_id=lot_id,
        )

    def _evaluate_upgrade(self, *, rules: Rules, at: datetime, channel: str) -> None:
        # Upgrades happen at once; downgrades wait for the grace period (_evaluate_downgrade).
        qualifying = self.qualifying(now=at, window_days=rules.tier_window_days)
        target = tier_for(rules, qualifying)
        if target.threshold > tier_named(rules, self.tier).threshold:
            self._record_tier_changed(
                from_tier=self.tier,
                to_tier=target.name,
                qualifying=qualifying,
                at=at,
                channel=channel,
                reason="upgrade",
            )

    def _add_lot(self, lot: Lot) -> None:
        """A new lot, which first pays off what the member owes."""
        self.last_lot_id = max(self.last_lot_id, lot.lot_id)
        paid = min(self.debt, lot.points)
        self.debt -= paid
        if lot.points > paid:
            self.lots.append(lot if not paid else replace(lot, points=lot.points - paid))

    def _tally_earn(self, breakdown: list[BreakdownPart], amount: Decimal) -> dict[str, int]:
        """Count a purchase's campaign parts in the tallies; its parts by tally key."""
        used: dict[str, int] = {}
        tallies: dict[str, CampaignTally] | None = None
        for part in breakdown:
            if part.campaign_id is None:
                continue
            if tallies is None:
                tallies = dict(self.campaign_tallies)
            key = _tally_key(part.campaign_id, part.variant)
            used[key] = part.points
            tally = tallies.get(key)
            tallies[key] = (
                CampaignTally(
                    campaign_id=part.campaign_id,
                    variant=part.variant,
                    earns=1,
                    points=part.points,
                    revenue=amount,
                )
                if tally is None
                else CampaignTally(
                    campaign_id=tally.campaign_id,
                    variant=tally.variant,
                    earns=tally.earns + 1,
                    points=tally.points + part.points,
                    revenue=tally.revenue + amount,
                )
            )
        if tallies is not None:
            self.campaign_tallies = tallies
        return used

    def _tally_refund(self, order: OrderRecord, amount: Decimal) -> None:
        """A refund of `amount` of `order` takes its campaign parts back in proportion
        (cumulatively, as the points are), and the revenue they counted."""
        before, after = order.refunded, order.refunded + amount
        tallies = dict(self.campaign_tallies)
        for key, points in order.campaigns.items():
            tally = tallies.get(key)
            if tally is None:
                continue
            taken = _share(points, after, order.amount) - _share(points, before, order.amount)
            tallies[key] = replace(tally, points=tally.points - taken, revenue=tally.revenue - amount)
        self.campaign_tallies = tallies

    def _touch(self, *, when: datetime, channel: str) -> None:
        if channel not in self.channels:
            self.channels.append(channel)
        self.first_activity_at = min(self.first_activity_at, when)
        self.last_activity_at = max(self.last_activity_at, when)

    # -- events: record only (these bodies run again on every replay) -------------------

    @event(events.IdentityLinked)
    def _identity_linked(self, *, identity: Identity | None, at: datetime, channel: str) -> None:
        if identity is not None:  # None once the member is forgotten
            self.identities.append(identity)
        self._touch(when=at, channel=channel)

    @event(events.IdentityUnlinked)
    def _identity_unlinked(self, *, identity: Identity | None, at: datetime, channel: str) -> None:
        if identity is not None:
            self.identities = [i for i in self.identities if i != identity]
        self._touch(when=at, channel=channel)

    @event(events.MembersMerged)
    def _members_merged(
        self,
        *,
        source_member_id: UUID,
        target_member_id: UUID,
        identities: list[Identity] | None,
        absorbed: events.Absorbed | None,
        at: datetime,
        channel: str,
    ) -> None:
        # One event type on both streams: the target absorbs, the source is retired.
        if self.id != target_member_id:
            # Everything moved to the target: the source keeps nothing, so a sum over members
            # counts each point once (its history still shows what it had).
            self._status = MemberStatus.MERGED.value
            self.merged_into = target_member_id
            self.identities = []
            self.lots = []
            self.accruals = []
            self.orders = {}
            self.lifetime_earned = self.lifetime_redeemed = self.expired = self.debt = 0
            self.adjusted = self.transferred = 0
            self.redemptions = {}
            self.campaign_tallies = {}
            return
        self.merged_from = [*self.merged_from, source_member_id]
        if absorbed is None:
            return
        self.identities.extend(identities or [])
        self.lots.extend(absorbed.lots)
        self.last_lot_id = absorbed.last_lot_id
        self.accruals.extend(absorbed.accruals)
        self.orders.update(absorbed.orders)
        self.lifetime_earned += absorbed.lifetime_earned
        self.lifetime_redeemed += absorbed.lifetime_redeemed
        self.expired += absorbed.expired
        self.debt += absorbed.debt
        self.adjusted += absorbed.adjusted
        self.transferred += absorbed.transferred
        self.redemptions = {**self.redemptions, **absorbed.redemptions}
        if absorbed.campaign_tallies:
            tallies = dict(self.campaign_tallies)
            for tally in absorbed.campaign_tallies:
                key = _tally_key(tally.campaign_id, tally.variant)
                mine = tallies.get(key)
                tallies[key] = tally if mine is None else _add_tallies(mine, tally)
            self.campaign_tallies = tallies
        for used in absorbed.channels:
            if used not in self.channels:
                self.channels.append(used)
        self.first_activity_at = min(self.first_activity_at, absorbed.first_activity_at)
        self.last_activity_at = max(self.last_activity_at, absorbed.last_activity_at)

    @event(events.PointsEarned)
    def _points_earned(
        self,
        *,
        source: str,
        order_ref: str | None,
        amount: Decimal | None,
        currency: str | None,
        items: list[PurchaseItem],
        points: int,
        breakdown: list[BreakdownPart],
        rules_version: int,
        tier: str,
        available_at: datetime,
        expires_at: datetime | None,
        occurred_at: datetime,
        reason: str | None,
        at: datetime,
        channel: str,
        program_version: int = 0,
    ) -> None:
        lot_id = self.last_lot_id + 1
        self.last_lot_id = lot_id
        if points > 0:
            self._add_lot(Lot(lot_id=lot_id, points=points, available_at=available_at, expires_at=expires_at))
            self.accruals.append(Accrual(occurred_at=occurred_at, points=points))
        self.lifetime_earned += points
        if order_ref is not None and amount is not None and currency is not None:
            used = self._tally_earn(breakdown, amount)
            self.orders[order_ref] = OrderRecord(
                amount=amount,
                currency=currency,
                points=points,
                lot_id=lot_id,
                occurred_at=occurred_at,
                campaigns=used,
            )
        # A purchase is the member's own activity (at its business time); an award is not.
        if source == "purchase":
            self._touch(when=occurred_at, channel=channel)

    # The hot events are recorded without the library's per-call work (domain/events.py).
    _record_points_earned = recorded_directly(_points_earned)

    @event(events.PointsRedeemed)
    def _points_redeemed(
        self,
        *,
        points: int,
        draws: list[LotDraw],
        reward_ref: str | None,
        order_ref: str | None,
        at: datetime,
        channel: str,
        redemption_id: UUID | None = None,
    ) -> None:
        self.lots = apply_draws(self.lots, draws)
        self.lifetime_redeemed += points
        if redemption_id is not None:
            self.redemptions = {
                **self.redemptions,
                str(redemption_id): Redemption(points=points, draws=draws),
            }
        self._touch(when=at, channel=channel)

    _record_points_redeemed = recorded_directly(_points_redeemed)

    @event(events.TierChanged)
    def _tier_changed(
        self,
        *,
        from_tier: str,
        to_tier: str,
        qualifying: int,
        at: datetime,
        channel: str,
        reason: str = "upgrade",
    ) -> None:
        self.tier = to_tier

    _record_tier_changed = recorded_directly(_tier_changed)

    @event(events.EarnReversed)
    def _earn_reversed(
        self,
        *,
        order_ref: str,
        amount: Decimal,
        points: int,
        draws: list[LotDraw],
        debt: int,
        at: datetime,
        channel: str,
    ) -> None:
        self.lots = apply_draws(self.lots, draws)
        self.debt += debt
        self.lifetime_earned -= points
        order = self.orders[order_ref]
        self.orders[order_ref] = replace(
            order, refunded=order.refunded + amount, reversed_points=order.reversed_points + points
        )
        if order.campaigns:
            self._tally_refund(order, amount)
        # The refunded part no longer counts for the tier (at the purchase's business time).
        self.accruals.append(Accrual(occurred_at=order.occurred_at, points=-points))
        self._touch(when=at, channel=channel)

    @event(events.RedemptionReversed)
    def _redemption_reversed(
        self, *, redemption_id: UUID, points: int, restored: list[LotDraw], at: datetime, channel: str
    ) -> None:
        key = str(redemption_id)
        kept = restore([], restored, at=at)
        self.lots = list(self.lots)  # changed in place below: a new list (see `lots`)
        for lot in kept:
            existing = next((i for i, old in enumerate(self.lots) if old.lot_id == lot.lot_id), None)
            if existing is None:
                self._add_lot(lot)
            else:
                self.lots[existing] = replace(
                    self.lots[existing], points=self.lots[existing].points + lot.points
                )
        self.lots.sort(key=lambda lot: lot.lot_id)
        self.lifetime_redeemed -= points
        self.redemptions = {**self.redemptions, key: replace(self.redemptions[key], reversed=True)}
        self._touch(when=at, channel=channel)

    @event(events.PointsHeld)
    def _points_held(
        self,
        *,
        hold_id: UUID,
        points: int,
        expires_at: datetime,
        order_ref: str | None,
        at: datetime,
        channel: str,
    ) -> None:
        self.holds = {
            **self.holds,
            str(hold_id): Hold(points=points, expires_at=expires_at, order_ref=order_ref),
        }
        self.held += points
        self._touch(when=at, channel=channel)

    def _close_hold(self, hold_id: UUID) -> Hold:
        key = str(hold_id)
        held = self.holds[key]
        self.holds = {k: v for k, v in self.holds.items() if k != key}
        self.closed_holds = self.closed_holds | {key}
        self.held -= held.points
        return held

    @event(events.HoldCaptured)
    def _hold_captured(
        self,
        *,
        hold_id: UUID,
        points: int,
        draws: list[LotDraw],
        released: int,
        debt: int,
        at: datetime,
        channel: str,
    ) -> None:
        self._close_hold(hold_id)
        self.lots = apply_draws(self.lots, draws)
        self.debt += debt
        self.lifetime_redeemed += points
        self._touch(when=at, channel=channel)

    @event(events.HoldReleased)
    def _hold_released(self, *, hold_id: UUID, points: int, reason: str, at: datetime, channel: str) -> None:
        self._close_hold(hold_id)

    @event(events.PointsAdjusted)
    def _points_adjusted(
        self,
        *,
        points: int,
        reason: str,
        lot: Lot | None,
        draws: list[LotDraw],
        debt: int,
        at: datetime,
        channel: str,
    ) -> None:
        if lot is not None:
            self._add_lot(lot)
        self.lots = apply_draws(self.lots, draws)
        self.debt += debt
        self.adjusted += points

    @event(events.PointsTransferred)
    def _points_transferred(
        self,
        *,
        from_member_id: UUID,
        to_member_id: UUID,
        points: int,
        draws: list[LotDraw],
        lots: list[Lot],
        at: datetime,
        channel: str,
    ) -> None:
        # One event type on both streams: the sender gives its draws, the receiver takes lots.
        if self.id == from_member_id:
            self.lots = apply_draws(self.lots, draws)
            self.transferred -= points
            self._touch(when=at, channel=channel)
            return
        for lot in lots:
            self._add_lot(lot)
        self.transferred += points

    @event(events.MemberForgotten)
    def _member_forgotten(self, *, merged_from: list[UUID], at: datetime, channel: str) -> None:
        # The personal data goes from this copy too (replays read it as None: the key is gone).
        self._status = MemberStatus.FORGOTTEN.value
        self.identities = []
        self.profile = None

    @event(events.PointsExpired)
    def _points_expired(self, *, points: int, draws: list[LotDraw], at: datetime, channel: str) -> None:
        self.lots = apply_draws(self.lots, draws)
        self.expired += points


def _check_purchase(amount: Decimal, currency: str, items: list[PurchaseItem], rules: Rules) -> None:
    check_amount(amount, currency)
    for i, item in enumerate(items):
        check_amount(item.amount, currency, field=f"items[{i}].amount")
        if item.quantity < 1:
            raise InvalidAmount("quantity must be at least 1", field=f"items[{i}].quantity")
    if currency != rules.currency:
        raise CurrencyMismatch(
            f"the program earns in {rules.currency}, not {currency}", expected=rules.currency
        )


def _tally_key(campaign_id: UUID, variant: str | None) -> str:
    return f"{campaign_id}/{variant or ''}"


def _add_tallies(a: CampaignTally, b: CampaignTally) -> CampaignTally:
    return replace(a, earns=a.earns + b.earns, points=a.points + b.points, revenue=a.revenue + b.revenue)


def _share(points: int, refunded: Decimal, amount: Decimal) -> int:
    """The points of `points` a refund of `refunded` (cumulative) of `amount` takes back."""
    return points if refunded >= amount else floor_points(points * refunded / amount)


def _check_points(points: int) -> None:
    if not 0 < points <= MAX_POINTS:
        raise InvalidAmount(f"points must be between 1 and {MAX_POINTS}", field="points")


def _expiry(rules: Rules, start: datetime) -> datetime | None:
    months = rules.earn.expiry_months
    return add_months(start, months) if months else None
