"""The API documents itself from the same Structs it speaks."""

from __future__ import annotations

from tests.api.conftest import Api


async def test_openapi_lists_every_endpoint_with_its_schemas(api: Api) -> None:
    response = await api.client.get("/schema/openapi.json")

    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    for path in (
        "/v1/members",
        "/v1/members/{member_id}",
        "/v1/members/lookup",
        "/v1/members/{member_id}/earn",
        "/v1/members/{member_id}/redeem",
        "/v1/members/{member_id}/merge",
        "/v1/quotes/earn",
        "/v1/program/rules",
        "/v1/api-keys",
    ):
        assert path in paths, path
    schemas = document["components"]["schemas"]
    assert {"EarnIn", "EarnOut", "RedeemIn", "MemberOut", "Rules"} <= set(schemas)
    assert schemas["EarnIn"]["properties"]["amount"]["pattern"]  # money is a decimal string
