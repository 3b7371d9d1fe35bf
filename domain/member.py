"""The Member aggregate: one member's identities, lots, balance and tier."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from eventsourcing.domain import event

from domain import member_events as events
from domain.errors import (
    BelowRedemptionMinimum,
    CurrencyMismatch,
    DuplicateOrder,
    IdentityNotLinked,
    InsufficientPoints,
    InvalidAmount,
    InvalidIdentity,
    LastIdentity,
    MemberForgotten,
    MemberMerged,
    MergeRefused,
)
from domain.events import LedgerAggregate
from domain.identities import Identity
from domain.lots import Lot, LotDraw, add_months, apply_draws, draw_oldest_first, is_expired
from domain.member_values import (
    Accrual,
    Balance,
    EarnResult,
    MemberStatus,
    OrderRecord,
    Profile,
    PurchaseItem,
    RedeemResult,
)
from domain.money import check_amount
from domain.rules import BreakdownPart, EarnQuote, Rules, quote_purchase, tier_for, tier_named

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


class Member(LedgerAggregate):
    """A member of the program: commands decide, `@event` methods only record."""

    # Snapshot state attributes holding personal data; the store encrypts exactly these.
    personal_fields = ("identities", "profile")

    MemberEnrolled = events.MemberEnrolled
    IdentityLinked = events.IdentityLinked
    PointsEarned = events.PointsEarned
    PointsRedeemed = events.PointsRedeemed
    TierChanged = events.TierChanged
    IdentityUnlinked = events.IdentityUnlinked
    MembersMerged = events.MembersMerged

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
        self.lots: list[Lot] = []
        # Lot ids are a counter of their own (not stream versions): a merge brings in lots
        # that need fresh ids which later earns must never reuse.
        self.last_lot_id = 0
        self.accruals: list[Accrual] = []
        self.orders: dict[str, OrderRecord] = {}
        self.lifetime_earned = 0
        self.lifetime_redeemed = 0
        self.expired = 0
        # Reserved by open holds (holds come later).
        self.held = 0
        # Points owed after a reversal took back points already spent; subtracted from
        # available, so a negative balance is shown, not hidden (reversals come later).
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
        # Fresh ids for the incoming lots, and the orders that point at them.
        renumbered = {lot.lot_id: self.last_lot_id + i for i, lot in enumerate(source.lots, start=1)}
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
            last_lot_id=self.last_lot_id + len(source.lots),
            accruals=list(source.accruals),
            orders={
                ref: OrderRecord(
                    amount=o.amount,
                    currency=o.currency,
                    points=o.points,
                    lot_id=renumbered.get(o.lot_id, 0),
                    occurred_at=o.occurred_at,
                )
                for ref, o in source.orders.items()
            },
            lifetime_earned=source.lifetime_earned,
            lifetime_redeemed=source.lifetime_redeemed,
            expired=source.expired,
            debt=source.debt,
            channels=list(source.channels),
            first_activity_at=source.first_activity_at,
            last_activity_at=source.last_activity_at,
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
    ) -> EarnResult:
        """Earn points for a purchase at the member's current tier, then re-evaluate tier."""
        quote = self.quote_purchase(
            amount=amount, currency=currency, items=items, rules=rules, rules_version=rules_version
        )
        if order_ref in self.orders:
            raise DuplicateOrder(f"order {order_ref!r} already earned", order_ref=order_ref)
        available_at = occurred_at + timedelta(days=rules.earn.pending_days)
        expires_at = _expiry(rules, occurred_at)
        self._points_earned(
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
    ) -> EarnResult:
        """Award points outside a purchase; available at once, and qualifying too."""
        self._check_active()
        _check_points(points)
        breakdown = [BreakdownPart("award", points)]
        quote = EarnQuote(points=points, breakdown=breakdown, rules_version=rules_version, tier=self.tier)
        expires_at = _expiry(rules, at)
        # No pending period: that protects purchases against returns; awards have none.
        self._points_earned(
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
        )
        return self._after_earn(quote, at, expires_at, rules=rules, at=at, channel=channel)

    def redeem(
        self,
        *,
        points: int,
        reward_ref: str | None,
        order_ref: str | None,
        at: datetime,
        channel: str,
        rules: Rules,
    ) -> RedeemResult:
        """Spend points from the lots that expire soonest."""
        self._check_active()
        _check_points(points)
        minimum = rules.redemption.min_points
        if points < minimum:
            raise BelowRedemptionMinimum(f"redemptions start at {minimum} points", min_points=minimum)
        available = self.balance(now=at, rules=rules).available
        if points > available:
            raise InsufficientPoints(f"{points} points requested, {available} available", available=available)
        draws = draw_oldest_first(self.lots, points, at)
        self._points_redeemed(
            points=points, draws=draws, reward_ref=reward_ref, order_ref=order_ref, at=at, channel=channel
        )
        return RedeemResult(redemption_id=self.version, points=points)

    # -- queries -------------------------------------------------------------------------

    def quote_purchase(
        self,
        *,
        amount: Decimal,
        currency: str,
        items: list[PurchaseItem],
        rules: Rules,
        rules_version: int,
    ) -> EarnQuote:
        """What a purchase would earn this member now (the checks of an earn, nothing recorded)."""
        self._check_active()
        _check_purchase(amount, currency, items, rules)
        return quote_purchase(rules, rules_version, self.tier, amount)

    def next_balance_change(self, *, after: datetime, rules: Rules) -> datetime | None:
        """The first instant after `after` at which `balance(now=...)` changes with no new event:
        a lot unlocks (`available_at`) or expires, or an earn leaves the tier window."""
        window = timedelta(days=rules.tier_window_days)
        instants = [i for lot in self.lots for i in (lot.available_at, lot.expires_at) if i is not None]
        instants += [accrual.occurred_at + window for accrual in self.accruals]
        return min((i for i in instants if i > after), default=None)

    def balance(self, *, now: datetime, rules: Rules) -> Balance:
        """The balance at `now`: locked lots are pending, lots past expiry are expired."""
        spendable = pending = lapsed = 0
        for lot in self.lots:
            if is_expired(lot, now):
                lapsed += lot.points
            elif lot.available_at > now:
                pending += lot.points
            else:
                spendable += lot.points
        return Balance(
            available=spendable - self.held - self.debt,
            pending=pending,
            held=self.held,
            lifetime_earned=self.lifetime_earned,
            lifetime_redeemed=self.lifetime_redeemed,
            # A lot past its expiry is expired even before the expiry event is recorded.
            expired=self.expired + lapsed,
            qualifying=self.qualifying(now=now, window_days=rules.tier_window_days),
            tier=self.tier,
        )

    def qualifying(self, *, now: datetime, window_days: int) -> int:
        """Points earned with a business time inside the rolling tier window before `now`."""
        since = now - timedelta(days=window_days)
        return sum(a.points for a in self.accruals if a.occurred_at > since)

    # -- helpers of the commands ---------------------------------------------------------

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
        # Upgrades happen at once; downgrades wait for the grace period (a later issue).
        qualifying = self.qualifying(now=at, window_days=rules.tier_window_days)
        target = tier_for(rules, qualifying)
        if target.threshold > tier_named(rules, self.tier).threshold:
            self._tier_changed(
                from_tier=self.tier, to_tier=target.name, qualifying=qualifying, at=at, channel=channel
            )

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
            return
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
    ) -> None:
        self.last_lot_id += 1
        lot_id = self.last_lot_id
        if points > 0:
            self.lots.append(
                Lot(lot_id=lot_id, points=points, available_at=available_at, expires_at=expires_at)
            )
            self.accruals.append(Accrual(occurred_at=occurred_at, points=points))
        self.lifetime_earned += points
        if order_ref is not None and amount is not None and currency is not None:
            self.orders[order_ref] = OrderRecord(
                amount=amount, currency=currency, points=points, lot_id=lot_id, occurred_at=occurred_at
            )
        # A purchase is the member's own activity (at its business time); an award is not.
        if source == "purchase":
            self._touch(when=occurred_at, channel=channel)

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
    ) -> None:
        self.lots = apply_draws(self.lots, draws)
        self.lifetime_redeemed += points
        self._touch(when=at, channel=channel)

    @event(events.TierChanged)
    def _tier_changed(
        self, *, from_tier: str, to_tier: str, qualifying: int, at: datetime, channel: str
    ) -> None:
        self.tier = to_tier


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


def _check_points(points: int) -> None:
    if not 0 < points <= MAX_POINTS:
        raise InvalidAmount(f"points must be between 1 and {MAX_POINTS}", field="points")


def _expiry(rules: Rules, start: datetime) -> datetime | None:
    months = rules.earn.expiry_months
    return add_months(start, months) if months else None
