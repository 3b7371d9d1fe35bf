"""The projections this service keeps, by name."""

from __future__ import annotations

from service.store.event_store import EventStore

from .balances import BalancesProjection
from .campaigns import CampaignMembersProjection
from .channels import ChannelsProjection
from .liability import LiabilityProjection
from .members import MembersProjection
from .projection import MemberProjection
from .segments import SegmentsProjection

PROJECTIONS: dict[str, type[MemberProjection]] = {
    BalancesProjection.kind: BalancesProjection,
    MembersProjection.kind: MembersProjection,
    SegmentsProjection.kind: SegmentsProjection,
    LiabilityProjection.kind: LiabilityProjection,
    ChannelsProjection.kind: ChannelsProjection,
    CampaignMembersProjection.kind: CampaignMembersProjection,
}


class UnknownProjection(KeyError):
    """No projection has that name."""


def projection_class(name: str) -> type[MemberProjection]:
    """The projection called `name`; UnknownProjection if there is none."""
    try:
        return PROJECTIONS[name]
    except KeyError:
        raise UnknownProjection(name) from None


def default_projections(store: EventStore) -> list[MemberProjection]:
    """One instance of every registered projection."""
    return [cls(store) for cls in PROJECTIONS.values()]
