"""Which request process owns a member's requests, and /metrics gathered from all (ADR 25)."""

from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from service.routing import merge_metrics, owner_of


def test_a_member_path_belongs_to_one_process_whatever_the_spelling_of_its_id() -> None:
    member = uuid.uuid4()
    owners = {
        owner_of(f"/v1/members/{spelling}/earn", 4)
        for spelling in (str(member), str(member).upper(), member.hex)
    }

    assert owners == {member.int % 4}
    assert owner_of(f"/v1/members/{member}", 4) == member.int % 4


def test_paths_naming_no_member_are_served_where_they_arrive() -> None:
    paths = ("/v1/members", "/v1/members/lookup", "/v1/members/not-an-id/earn", "/v1/holds/x", "/metrics")
    for path in paths:
        assert owner_of(path, 2) is None


def test_members_spread_over_the_processes() -> None:
    owners = [owner_of(f"/v1/members/{uuid.uuid4()}/earn", 4) for _ in range(4000)]

    assert all(800 < owners.count(p) < 1200 for p in range(4))


def test_metrics_of_every_process_are_one_exposition_labelled_by_process() -> None:
    text = (
        "# HELP loyalty_appended_events_total Events appended.\n"
        "# TYPE loyalty_appended_events_total counter\n"
        'loyalty_appended_events_total{{kind="x"}} {n}\n'
    )

    merged = merge_metrics({0: text.format(n=3), 2: text.format(n=5)}, 3).decode()

    families = {f.name: f for f in text_string_to_metric_families(merged)}
    appended = {s.labels["process"]: s.value for s in families["loyalty_appended_events"].samples}
    up = {s.labels["process"]: s.value for s in families["loyalty_request_process_up"].samples}
    assert appended == {"0": 3.0, "2": 5.0}
    assert up == {"0": 1.0, "1": 0.0, "2": 1.0}
    assert merged.count("# TYPE loyalty_appended_events_total counter") == 1
