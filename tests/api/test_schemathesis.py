"""Schemathesis against the running service: every documented operation, fed generated requests,
answers only what its OpenAPI document declares (statuses, content types, bodies, headers) and
never a 5xx."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as sc
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation

from tests.api.conftest import ADMIN_KEY, Api

# Examples per operation and mode: valid requests (what works must answer as documented) and
# invalid ones (where the 500s hide: wrong types, missing fields, values out of range).
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}
LIVE = "GET /v1/events/live"  # the endless stream of events
CHECKS = [
    sc.not_a_server_error,
    sc.status_code_conformance,
    sc.content_type_conformance,
    sc.response_schema_conformance,
    sc.response_headers_conformance,
]


@dataclass
class Fuzz:
    """One run over the served document: what each operation answered, and what broke."""

    base_url: str
    member_id: str  # a member who exists
    position: int  # a position the log has certainly reached
    # Per operation ("METHOD /path"), one valid request: generated data seldom gets a command
    # past validation, and the success answers must conform too.
    valid: dict[str, dict[str, Any]]
    session: requests.Session = field(default_factory=requests.Session)
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        schema = schemathesis.openapi.from_url(
            f"{self.base_url}/schema/openapi.json", config=schemathesis.Config()
        )
        with self.session:
            for result in schema.get_all_operations():
                operation = result.ok()
                if operation.label in self.valid:
                    self.story(operation)
            for mode, examples in EXAMPLES.items():
                for result in schema.get_all_operations():
                    self.operation(result.ok(), mode, examples)

    def story(self, operation: APIOperation) -> None:
        try:
            self.call(operation.label, operation.Case(**self.valid[operation.label]), existing_member=False)
        except (Exception, FailureGroup) as exc:
            self.failures.append(f"{operation.label} (a valid request):\n{exc}")

    def operation(self, operation: APIOperation, mode: GenerationMode, examples: int) -> None:
        # Half the cases name a member who exists, so commands get past the 404 into the handlers.
        strategy = st.tuples(operation.as_strategy(generation_mode=mode), st.booleans())

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,  # the same cases every run: a suite test must not flake
            database=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # report, don't shrink
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(strategy)
        def run(drawn: tuple[Case, bool]) -> None:
            case, existing_member = drawn
            self.call(operation.label, case, existing_member=existing_member)

        try:
            run()
        except (Exception, FailureGroup) as exc:
            self.failures.append(f"{operation.label} ({mode.value} data):\n{exc}")

    def call(self, label: str, case: Case, *, existing_member: bool) -> None:
        if existing_member and "member_id" in (case.path_parameters or {}):
            case.path_parameters = {**(case.path_parameters or {}), "member_id": self.member_id}
        if isinstance(case.query, dict) and isinstance(case.query.get("min_position"), int):
            # A position the log has not reached is a documented 503 after a wait (spec §4), which
            # not_a_server_error would count: ask only for positions that exist.
            case.query["min_position"] = min(case.query["min_position"], self.position)
        if label == LIVE:
            # An endless stream by design: a valid `after` and `limit` ask for one event the log
            # holds, so the answer ends (an invalid one is a 422 at once and is left as generated).
            query = dict(case.query) if isinstance(case.query, dict) else {}
            if isinstance(query.get("limit"), int) or "limit" not in query:
                query["limit"] = 1
            if isinstance(query.get("after"), int) or "after" not in query:
                query["after"] = min(query.get("after") or 0, self.position - 1)
            case.query = query
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": uuid.uuid4().hex}
        # On the case itself: negative cases may carry a generated Authorization of their own.
        case.headers = {**(case.headers or {}), **headers}
        response = case.call(base_url=self.base_url, session=self.session, timeout=20)
        self.statuses[label][response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)


async def valid_requests(api: Api) -> tuple[dict[str, dict[str, Any]], str, int]:
    """One valid request per operation, on members, rules and keys made here; and the member
    and log position the fuzzing may use."""
    member = (
        await api.post(
            "/v1/members", {"identities": [{"kind": "email", "value": "a@example.com"}]}, key=ADMIN_KEY
        )
    ).json()
    source = (
        await api.post(
            "/v1/members", {"identities": [{"kind": "email", "value": "b@example.com"}]}, key=ADMIN_KEY
        )
    ).json()
    await api.post("/v1/channels", {"id": "fuzz-pos", "name": "Fuzz POS", "kind": "pos"}, key=ADMIN_KEY)
    key = (await api.post("/v1/api-keys", {"channel": "fuzz-pos", "scopes": ["read"]}, key=ADMIN_KEY)).json()
    receiver = (
        await api.post(
            "/v1/members", {"identities": [{"kind": "email", "value": "d@example.com"}]}, key=ADMIN_KEY
        )
    ).json()
    doomed = (
        await api.post(
            "/v1/members", {"identities": [{"kind": "email", "value": "e@example.com"}]}, key=ADMIN_KEY
        )
    ).json()
    program = (await api.get("/v1/program", key=ADMIN_KEY)).json()
    member_id = member["member_id"]
    at_member = {"member_id": member_id}
    currency = program["rules"]["currency"]
    purchase = {"order_ref": "fuzz-order-1", "amount": "120.00", "currency": currency}
    # Points to refund, hold, adjust and transfer, and two holds: one to capture, one to release.
    seed = {"order_ref": "fuzz-seed", "amount": "1000.00", "currency": currency}
    await api.post(f"/v1/members/{member_id}/earn", seed, key=ADMIN_KEY)
    to_capture, to_release = [
        (await api.post(f"/v1/members/{member_id}/holds", {"points": 50}, key=ADMIN_KEY)).json()["hold_id"]
        for _ in range(2)
    ]
    phone = {"kind": "phone", "value": "+8613800138000"}
    now = datetime.now(UTC)
    window = {"starts_at": now.isoformat(), "ends_at": (now + timedelta(days=7)).isoformat()}
    campaign = {"name": "Fuzz double", **window, "multiplier": "2"}
    started = (await api.post("/v1/campaigns", campaign, key=ADMIN_KEY)).json()["campaign_id"]
    to_end = (await api.post("/v1/campaigns", campaign, key=ADMIN_KEY)).json()["campaign_id"]
    valid: dict[str, dict[str, Any]] = {
        "POST /v1/campaigns": {"body": {**campaign, "variants": [{"name": "a", "weight": 1}]}},
        "GET /v1/campaigns": {"query": {"active_at": now.isoformat(), "channel": "fuzz-pos"}},
        "GET /v1/campaigns/{campaign_id}": {"path_parameters": {"campaign_id": started}},
        "POST /v1/campaigns/{campaign_id}/end": {"path_parameters": {"campaign_id": to_end}},
        "GET /v1/members/{member_id}/campaigns": {"path_parameters": at_member},
        "GET /v1/analytics/campaigns/{campaign_id}": {"path_parameters": {"campaign_id": started}},
        "POST /v1/members": {"body": {"identities": [{"kind": "email", "value": "c@example.com"}]}},
        "GET /v1/members/lookup": {"query": {"kind": "email", "value": "a@example.com"}},
        "GET /v1/members/{member_id}": {"path_parameters": at_member, "query": {"min_position": 1}},
        "POST /v1/members/{member_id}/identities": {"path_parameters": at_member, "body": phone},
        "POST /v1/members/{member_id}/identities/unlink": {"path_parameters": at_member, "body": phone},
        "POST /v1/members/{member_id}/earn": {"path_parameters": at_member, "body": purchase},
        "POST /v1/quotes/earn": {"body": {**purchase, "member_id": member_id}},
        "POST /v1/members/{member_id}/redeem": {"path_parameters": at_member, "body": {"points": 10}},
        "POST /v1/members/{member_id}/reversals": {
            "path_parameters": at_member,
            "body": {"order_ref": "fuzz-seed", "amount": "10.00"},
        },
        "POST /v1/members/{member_id}/holds": {
            "path_parameters": at_member,
            "body": {"points": 20, "ttl_seconds": 600, "order_ref": "fuzz-web-1"},
        },
        "POST /v1/holds/{hold_id}/capture": {
            "path_parameters": {"hold_id": to_capture},
            "body": {"points": 30},
        },
        "POST /v1/holds/{hold_id}/release": {"path_parameters": {"hold_id": to_release}, "body": {}},
        "POST /v1/members/{member_id}/adjustments": {
            "path_parameters": at_member,
            "body": {"points": -5, "reason": "correction"},
        },
        "POST /v1/members/{member_id}/transfers": {
            "path_parameters": at_member,
            "body": {"to_member_id": receiver["member_id"], "points": 5},
        },
        "POST /v1/batch": {
            "body": {
                "items": [
                    {
                        "op": "earn",
                        "member_id": member_id,
                        "idempotency_key": "fuzz-batch-1",
                        "body": {"order_ref": "fuzz-batch-order", "amount": "10.00", "currency": currency},
                    }
                ]
            }
        },
        "POST /v1/members/{member_id}/merge": {
            "path_parameters": at_member,
            "body": {"source_member_id": source["member_id"]},
        },
        "GET /v1/members/{member_id}/balance": {"path_parameters": at_member},
        "GET /v1/members/{member_id}/export": {"path_parameters": at_member},
        "POST /v1/members/{member_id}/forget": {
            "path_parameters": {"member_id": doomed["member_id"]},
            "body": {},
        },
        "GET /v1/members/{member_id}/history": {"path_parameters": at_member, "query": {"limit": 5}},
        "GET /v1/members/{member_id}/lots": {"path_parameters": at_member},
        LIVE: {"query": {"after": 0, "limit": 3}},
        "GET /v1/program": {},
        "PUT /v1/program/rules": {"body": program["rules"]},
        "GET /v1/program/rules/{version}": {"path_parameters": {"version": program["rules_version"]}},
        "POST /v1/channels": {"body": {"id": "fuzz-app", "name": "Fuzz app", "kind": "app"}},
        "GET /v1/channels": {},
        "POST /v1/api-keys": {"body": {"channel": "fuzz-pos", "scopes": ["earn", "read"]}},
        "DELETE /v1/api-keys/{key_id}": {"path_parameters": {"key_id": key["key_id"]}},
        "GET /v1/analytics/segments": {},
        "GET /v1/segments/{name}/members": {"path_parameters": {"name": "active"}, "query": {"limit": 5}},
        "GET /v1/analytics/channels": {"query": {"from": "2020-01-01", "to": "2030-12-31"}},
        "GET /v1/analytics/liability": {},
        "GET /v1/analytics/journeys": {},
        "GET /v1/audit/verify": {},
        "GET /v1/audit/events": {"query": {"after": 1, "limit": 10}},
        "GET /v1/audit/checkpoints": {},
        "GET /v1/audit/public-key": {},
    }
    return valid, member_id, int(source["position"])


async def test_every_operation_answers_as_documented_and_never_with_a_5xx(api: Api) -> None:
    valid, member_id, position = await valid_requests(api)
    fuzz = Fuzz(str(api.client.base_url).rstrip("/"), member_id, position, valid)

    # Schemathesis is synchronous: it runs in a thread while this loop serves its requests.
    await asyncio.to_thread(fuzz.run)

    assert not fuzz.failures, "\n\n".join(fuzz.failures)
    # Not vacuous: every documented operation was called, and answered at least once with success.
    assert set(fuzz.statuses) == set(valid)
    for label, statuses in fuzz.statuses.items():
        assert any(200 <= status < 300 for status in statuses), f"{label}: {dict(statuses)}"


# Bounded by the number of examples, not by a clock (speed is measured by `loyalty bench`); the
# timeout only catches a hang, with room for a loaded shared machine.
pytestmark = pytest.mark.timeout(600)
