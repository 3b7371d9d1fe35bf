"""The Program aggregate: the one loyalty program, every version of its rules, its campaigns."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event
from msgspec.structs import replace

from domain.campaigns import Campaign, CampaignRecord, validate_campaign
from domain.errors import CampaignAlreadyEnded, CampaignNotFound
from domain.events import LedgerAggregate
from domain.rules import DEFAULT_RULES, Rules, validate_rules

_NO_CAMPAIGNS: dict[str, CampaignRecord] = {}  # by campaign id (text: snapshots are JSON)

# One program per deployment, so its stream id is a constant every process agrees on.
PROGRAM_ID: UUID = uuid5(NAMESPACE_URL, "loyalty-ledger:program")


class Program(LedgerAggregate):
    """The program; rules are versioned 1, 2, 3 ... and every version is kept."""

    class ProgramCreated(LedgerAggregate.Created):
        """The program came into being."""

        at: datetime

    class RulesPublished(LedgerAggregate.Event):
        """A new version of the rules applies from now on."""

        version: int
        rules: Rules
        at: datetime
        channel: str

    class CampaignStarted(LedgerAggregate.Event):
        """A campaign joined the program: it applies to purchases inside its window (which
        may open later) until the window closes or the campaign is ended."""

        campaign_id: UUID
        campaign: Campaign
        at: datetime
        channel: str

    class CampaignEnded(LedgerAggregate.Event):
        """A campaign was ended before its window closed: no earn recorded after this applies it."""

        campaign_id: UUID
        at: datetime
        channel: str

    # Added after programs were first recorded: a snapshot taken before lacks it (class-level
    # default, replaced, never changed in place). In start order (the log's).
    campaigns = _NO_CAMPAIGNS

    def __init__(self, *, at: datetime) -> None:
        # Applies ProgramCreated; rules arrive with the first RulesPublished.
        self.created_at = at
        # Index i holds version i + 1.
        self.rules_versions: list[Rules] = []

    @classmethod
    def create(cls, *, at: datetime) -> Program:
        """Create the program, starting with the default rules as version 1."""
        program = cls._create(cls.ProgramCreated, id=PROGRAM_ID, at=at, timestamp=at)
        program._rules_published(version=1, rules=DEFAULT_RULES, at=at, channel="system")
        return program

    @property
    def rules(self) -> Rules:
        """The rules in force."""
        return self.rules_versions[-1]

    @property
    def rules_version(self) -> int:
        """The version number of the rules in force."""
        return len(self.rules_versions)

    def rules_at(self, version: int) -> Rules:
        """The rules published as `version`; KeyError if there is no such version."""
        if not 1 <= version <= len(self.rules_versions):
            raise KeyError(version)
        return self.rules_versions[version - 1]

    def publish_rules(self, *, rules: Rules, at: datetime, channel: str) -> int:
        """Validate and publish `rules` as the next version; returns that version."""
        validate_rules(rules)
        version = self.rules_version + 1
        self._rules_published(version=version, rules=rules, at=at, channel=channel)
        return version

    @event(RulesPublished)
    def _rules_published(self, *, version: int, rules: Rules, at: datetime, channel: str) -> None:
        self.rules_versions.append(rules)

    # -- campaigns -------------------------------------------------------------------------

    def start_campaign(
        self, *, campaign_id: UUID, campaign: Campaign, channels: Collection[str], at: datetime, channel: str
    ) -> CampaignRecord:
        """Validate and record a campaign (its window may open later: it applies from then)."""
        validate_campaign(
            campaign,
            now=at,
            currency=self.rules.currency,
            tiers={t.name for t in self.rules.tiers},
            channels=channels,
        )
        self._campaign_started(campaign_id=campaign_id, campaign=campaign, at=at, channel=channel)
        return self.campaigns[str(campaign_id)]

    def end_campaign(self, *, campaign_id: UUID, at: datetime, channel: str) -> CampaignRecord:
        """End a campaign now; earns recorded from now on no longer apply it."""
        record = self.campaign(campaign_id)
        if record.ended_at is not None:
            raise CampaignAlreadyEnded(
                f"campaign {campaign_id} was ended at {record.ended_at.isoformat()}",
                campaign_id=str(campaign_id),
            )
        self._campaign_ended(campaign_id=campaign_id, at=at, channel=channel)
        return self.campaigns[str(campaign_id)]

    def campaign(self, campaign_id: UUID) -> CampaignRecord:
        """One campaign; CampaignNotFound if the program has none with this id."""
        record = self.campaigns.get(str(campaign_id))
        if record is None:
            raise CampaignNotFound(f"no campaign {campaign_id}", campaign_id=str(campaign_id))
        return record

    def offers(self) -> list[CampaignRecord]:
        """The campaigns not ended, in start order: those an earn matches against its time."""
        return [r for r in self.campaigns.values() if r.ended_at is None]

    @event(CampaignStarted)
    def _campaign_started(self, *, campaign_id: UUID, campaign: Campaign, at: datetime, channel: str) -> None:
        record = CampaignRecord(campaign_id=campaign_id, campaign=campaign, started_at=at)
        self.campaigns = {**self.campaigns, str(campaign_id): record}

    @event(CampaignEnded)
    def _campaign_ended(self, *, campaign_id: UUID, at: datetime, channel: str) -> None:
        key = str(campaign_id)
        self.campaigns = {**self.campaigns, key: replace(self.campaigns[key], ended_at=at)}
