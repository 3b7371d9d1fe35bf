"""`segments` on the member view (`GET /v1/members/{id}`) is the segments projection's
membership (`GET /v1/segments/{name}/members`), and moves with it: a member entering another
segment by an event (a second channel, high value, activity after a long silence) or leaving
them all (merged into another) is shown so on the view at once (read at `min_position`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from projections.segments import SEGMENTS
from tests.api.conftest import ADMIN_KEY, Api
from tests.integration.test_segments import enrol_at

pytestmark = pytest.mark.asyncio

EVERYDAY = ["read", "earn", "members"]


async def membership(api: Api, member_id: str, position: int) -> list[str]:
    """The segments whose member list (paged through) holds the member, in SEGMENTS order."""
    found = []
    for name in SEGMENTS:
        after: str | None = None
        while True:
            params: dict[str, Any] = {"min_position": position, "limit": 2} | (
                {"after": after} if after else {}
            )
            response = await api.get(f"/v1/segments/{name}/members", key=ADMIN_KEY, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            if member_id in {m["member_id"] for m in page["members"]}:
                found.append(name)
                break
            after = page["next_after"]
            if after is None:
                break
    return found


async def shown(api: Api, key: str, member_id: str, position: int) -> list[str]:
    response = await api.get(f"/v1/members/{member_id}", key=key, params={"min_position": position})
    assert response.status_code == 200, response.text
    return list(response.json()["segments"])


async def same_everywhere(api: Api, keys: list[str], member_id: str, expected: list[str]) -> None:
    """The view (through each key: the projection's view, and the member's own with identities
    in the clear) and the segment lists agree, and are what the test expects."""
    position = await api.last_position()
    listed = await membership(api, member_id, position)
    for key in keys:
        assert await shown(api, key, member_id, position) == listed, key
    assert listed == expected


async def earn(api: Api, key: str, member_id: str, amount: str) -> None:
    body = {"order_ref": f"o-{member_id}-{amount}-{key[-6:]}", "amount": amount, "currency": "CNY"}
    response = await api.post(f"/v1/members/{member_id}/earn", body, key=key)
    assert response.status_code == 201, response.text


async def test_segments_on_the_member_view_are_the_projections_and_move_with_it(api: Api) -> None:
    pos = await api.channel_key("pos-seg", EVERYDAY, kind="pos")
    app = await api.channel_key("app-seg", EVERYDAY, kind="app")
    privacy = await api.channel_key("crm-seg", [*EVERYDAY, "privacy"], kind="internal")
    readers = [pos, privacy]

    fresh = await api.enrol(pos)
    await same_everywhere(api, readers, fresh, ["new", "active"])
    await earn(api, app, fresh, "120.00")  # a second channel
    await same_everywhere(api, readers, fresh, ["new", "active", "multi_channel"])
    await earn(api, pos, fresh, "10000.00")  # 10,000 points and more: high value
    await same_everywhere(api, readers, fresh, ["new", "active", "high_value", "multi_channel"])

    now = datetime.now(UTC)
    quiet = str(await enrol_at(api.services, now - timedelta(days=70)))
    await same_everywhere(api, readers, quiet, ["at_risk"])
    # Back (through another channel than it enrolled at, "pos-sh-01"): no longer at risk.
    await earn(api, pos, quiet, "50.00")
    await same_everywhere(api, readers, quiet, ["active", "multi_channel"])

    gone = str(await enrol_at(api.services, now - timedelta(days=200)))
    await same_everywhere(api, readers, gone, ["dormant"])
    merged = await api.post(f"/v1/members/{fresh}/merge", {"source_member_id": gone}, key=privacy)
    assert merged.status_code == 201, merged.text
    await same_everywhere(api, readers, gone, [])  # merged into another: in no segment
    await same_everywhere(api, readers, fresh, ["new", "active", "high_value", "multi_channel"])
