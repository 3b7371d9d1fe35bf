"""Other services learn the event channels from the service itself."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api.conftest import Api

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


async def test_asyncapi_is_served_and_matches_the_committed_document(api: Api) -> None:
    response = await api.client.get("/asyncapi.json")

    assert response.status_code == 200
    served = response.json()
    assert served["asyncapi"].startswith("3.")
    assert served == json.loads(DOCS.read_text())
    addresses = {c["address"] for c in served["channels"].values()}
    assert "loyalty.events.points_earned.{member_id}" in addresses
