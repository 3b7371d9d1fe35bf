"""Use-case results -> response bodies (the one place each response shape is filled)."""

from __future__ import annotations

import msgspec

from domain.member_values import Balance
from domain.rules import BreakdownPart
from service.handlers.results import (
    Adjusted,
    BalanceAt,
    CampaignResults,
    CampaignState,
    Earned,
    Held,
    History,
    HoldClosed,
    LiveEvent,
    MemberExport,
    MemberLots,
    MemberOffers,
    MemberState,
    Quote,
    Redeemed,
    Reversed,
    RulesState,
    Transferred,
)

from .schemas import (
    AdjustmentOut,
    BalanceAtOut,
    BalanceOut,
    BreakdownOut,
    CampaignOut,
    CampaignResultsOut,
    EarnOut,
    ExpiringOut,
    ExportedEventOut,
    HistoryItemOut,
    HistoryOut,
    HoldClosedOut,
    HoldOut,
    IdentityOut,
    LiveEventOut,
    LotOut,
    LotsOut,
    MemberCampaignOut,
    MemberCampaignsOut,
    MemberExportOut,
    MemberOut,
    ProfileOut,
    ProgramOut,
    QuoteOut,
    RedeemOut,
    ReversalOut,
    TransferOut,
    VariantResultOut,
)


def balance_out(balance: Balance) -> BalanceOut:
    return BalanceOut(
        available=balance.available,
        pending=balance.pending,
        held=balance.held,
        lifetime_earned=balance.lifetime_earned,
        lifetime_redeemed=balance.lifetime_redeemed,
        expired=balance.expired,
        qualifying=balance.qualifying,
        tier=balance.tier,
        expiring=None
        if balance.expiring is None
        else ExpiringOut(points=balance.expiring.points, at=balance.expiring.at),
    )


def breakdown_out(parts: list[BreakdownPart]) -> list[BreakdownOut]:
    return [
        BreakdownOut(
            rule=p.rule, points=p.points, campaign_id=p.campaign_id, variant=p.variant, tier=p.tier
        )
        for p in parts
    ]


def member_out(state: MemberState, position: int | None) -> MemberOut:
    return MemberOut(
        member_id=state.member_id,
        status=state.status,
        merged_into=state.merged_into,
        tier=state.tier,
        identities=[IdentityOut(kind=i.kind, value=i.value) for i in state.identities],
        balance=balance_out(state.balance),
        channels=list(state.channels),
        first_activity_at=state.first_activity_at,
        last_activity_at=state.last_activity_at,
        position=position,
        segments=state.segments,
    )


def earn_out(earned: Earned, position: int) -> EarnOut:
    return EarnOut(
        member_id=earned.member_id,
        event_id=earned.event_id,
        points=earned.points,
        breakdown=breakdown_out(earned.breakdown),
        rules_version=earned.rules_version,
        available_at=earned.available_at,
        expires_at=earned.expires_at,
        position=position,
        balance=balance_out(earned.balance),
    )


def redeem_out(redeemed: Redeemed, position: int) -> RedeemOut:
    return RedeemOut(
        member_id=redeemed.member_id,
        redemption_id=redeemed.redemption_id,
        points=redeemed.points,
        reward_ref=redeemed.reward_ref,
        order_ref=redeemed.order_ref,
        position=position,
        balance=balance_out(redeemed.balance),
    )


def reversal_out(reversed_: Reversed, position: int) -> ReversalOut:
    return ReversalOut(
        member_id=reversed_.member_id,
        event_id=reversed_.event_id,
        points=reversed_.points,
        position=position,
        balance=balance_out(reversed_.balance),
    )


def hold_out(held: Held, position: int) -> HoldOut:
    return HoldOut(
        member_id=held.member_id,
        hold_id=held.hold_id,
        points=held.points,
        expires_at=held.expires_at,
        position=position,
        balance=balance_out(held.balance),
    )


def hold_closed_out(closed: HoldClosed, position: int) -> HoldClosedOut:
    return HoldClosedOut(
        member_id=closed.member_id,
        hold_id=closed.hold_id,
        captured=closed.captured,
        released=closed.released,
        position=position,
        balance=balance_out(closed.balance),
    )


def adjustment_out(adjusted: Adjusted, position: int) -> AdjustmentOut:
    return AdjustmentOut(
        member_id=adjusted.member_id,
        event_id=adjusted.event_id,
        points=adjusted.points,
        position=position,
        balance=balance_out(adjusted.balance),
    )


def transfer_out(transferred: Transferred, position: int) -> TransferOut:
    return TransferOut(
        member_id=transferred.member_id,
        to_member_id=transferred.to_member_id,
        points=transferred.points,
        position=position,
        balance=balance_out(transferred.balance),
    )


def program_out(state: RulesState, position: int | None = None) -> ProgramOut:
    return ProgramOut(rules_version=state.rules_version, rules=state.rules, position=position)


def quote_out(quote: Quote) -> QuoteOut:
    return QuoteOut(
        member_id=quote.member_id,
        points=quote.points,
        breakdown=breakdown_out(quote.breakdown),
        rules_version=quote.rules_version,
        tier=quote.tier,
    )


def balance_at_out(at: BalanceAt) -> BalanceAtOut:
    return BalanceAtOut(member_id=at.member_id, as_of=at.as_of, balance=balance_out(at.balance))


def history_out(history: History) -> HistoryOut:
    return HistoryOut(
        member_id=history.member_id,
        events=[
            HistoryItemOut(
                position=e.position,
                event_id=e.event_id,
                stream_version=e.stream_version,
                type=e.type,
                channel=e.channel,
                points=e.points,
                occurred_at=e.occurred_at,
                recorded_at=e.recorded_at,
            )
            for e in history.events
        ],
        next_after=history.next_after,
    )


def lots_out(lots: MemberLots) -> LotsOut:
    return LotsOut(
        member_id=lots.member_id,
        as_of=lots.as_of,
        lots=[
            LotOut(
                lot_id=lot.lot_id, points=lot.points, available_at=lot.available_at, expires_at=lot.expires_at
            )
            for lot in lots.lots
        ],
    )


def live_event_out(event: LiveEvent) -> LiveEventOut:
    return LiveEventOut(
        position=event.position,
        event_id=event.event_id,
        member_id=event.member_id,
        stream_version=event.stream_version,
        type=event.type,
        channel=event.channel,
        points=event.points,
        occurred_at=event.occurred_at,
        recorded_at=event.recorded_at,
    )


def export_out(export: MemberExport) -> MemberExportOut:
    profile = export.profile
    return MemberExportOut(
        member_id=export.member_id,
        status=export.status,
        merged_into=export.merged_into,
        merged_from=list(export.merged_from),
        tier=export.tier,
        identities=[IdentityOut(kind=i.kind, value=i.value) for i in export.identities],
        profile=None
        if profile is None
        else ProfileOut(name=profile.name, birthday=profile.birthday, locale=profile.locale),
        balance=balance_out(export.balance),
        channels=list(export.channels),
        enrolled_at=export.enrolled_at,
        first_activity_at=export.first_activity_at,
        last_activity_at=export.last_activity_at,
        exported_at=export.exported_at,
        events=[
            ExportedEventOut(
                member_id=e.member_id,
                position=e.position,
                event_id=e.event_id,
                stream_version=e.stream_version,
                type=e.type,
                channel=e.channel,
                occurred_at=e.occurred_at,
                recorded_at=e.recorded_at,
                # To JSON's own types here (money as decimal strings, as everywhere).
                data=msgspec.to_builtins(e.data),
            )
            for e in export.events
        ],
    )


def campaign_out(state: CampaignState, position: int | None = None) -> CampaignOut:
    return CampaignOut(
        campaign_id=state.campaign_id,
        status=state.status,
        started_at=state.started_at,
        ended_at=state.ended_at,
        campaign=state.campaign,
        position=position,
    )


def member_campaigns_out(offers: MemberOffers) -> MemberCampaignsOut:
    return MemberCampaignsOut(
        member_id=offers.member_id,
        at=offers.at,
        campaigns=[
            MemberCampaignOut(
                campaign_id=o.record.campaign_id,
                name=o.record.campaign.name,
                starts_at=o.record.campaign.starts_at,
                ends_at=o.record.campaign.ends_at,
                channels=o.record.campaign.channels,
                min_amount=None
                if o.record.campaign.min_amount is None
                else str(o.record.campaign.min_amount),
                categories=o.record.campaign.categories,
                skus=o.record.campaign.skus,
                variant=o.variant,
                multiplier=None if o.multiplier is None else str(o.multiplier),
                bonus_points=o.bonus_points,
                cap_per_member=o.record.campaign.cap_per_member,
                remaining=o.remaining,
            )
            for o in offers.offers
        ],
    )


def campaign_results_out(results: CampaignResults) -> CampaignResultsOut:
    return CampaignResultsOut(
        campaign_id=results.campaign_id,
        name=results.name,
        variants=[
            VariantResultOut(
                variant=v.variant,
                members=v.members,
                earns=v.earns,
                bonus_points=v.bonus_points,
                revenue=str(v.revenue),
            )
            for v in results.variants
        ],
    )
