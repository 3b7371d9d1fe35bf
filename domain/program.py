"""The Program aggregate: the one loyalty program and every version of its rules."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from domain.events import LedgerAggregate
from domain.rules import DEFAULT_RULES, Rules, validate_rules

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
