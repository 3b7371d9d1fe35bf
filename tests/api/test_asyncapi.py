"""Other services learn the event channels from the service itself."""

from __future__ import annotations

from service.bus.asyncapi import asyncapi_document
from tests.api.conftest import Api


async def test_asyncapi_is_served_for_the_configured_stream(api: Api) -> None:
    settings = api.services.settings

    response = await api.client.get("/asyncapi.json")

    assert response.status_code == 200
    served = response.json()
    assert served["asyncapi"].startswith("3.")
    # The committed docs/asyncapi.json is this document for the default settings (unit-tested).
    assert served == asyncapi_document(settings, subject_prefix=settings.subject_prefix)
    addresses = {c["address"] for c in served["channels"].values()}
    assert f"{settings.subject_prefix}.points_earned.{{member_id}}" in addresses
