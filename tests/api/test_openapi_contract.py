"""The served OpenAPI document tells the truth: idempotency headers on commands, problem+json
errors with every status an operation can answer, and the scopes each operation needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest_asyncio

from tests.api.conftest import Api

Operation = tuple[str, str, dict[str, Any]]  # method, path, operation object

# Spec §4: the scopes each operation needs; each inner set is "any one of", all sets must hold.
SCOPES: dict[tuple[str, str], list[set[str]]] = {
    ("POST", "/v1/members"): [{"members"}],
    ("GET", "/v1/members/lookup"): [{"read"}],
    ("GET", "/v1/members/{member_id}"): [{"read"}],
    ("POST", "/v1/members/{member_id}/identities"): [{"members"}],
    ("POST", "/v1/members/{member_id}/identities/unlink"): [{"members"}],
    ("POST", "/v1/members/{member_id}/merge"): [{"members"}, {"privacy"}],
    ("POST", "/v1/members/{member_id}/earn"): [{"earn", "award"}],
    ("POST", "/v1/quotes/earn"): [{"read"}],
    ("POST", "/v1/members/{member_id}/redeem"): [{"redeem"}],
    # A refund needs `earn` and an undone redemption `redeem`: the body decides which (as for earn).
    ("POST", "/v1/members/{member_id}/reversals"): [{"earn", "redeem"}],
    ("POST", "/v1/members/{member_id}/holds"): [{"redeem"}],
    ("POST", "/v1/holds/{hold_id}/capture"): [{"redeem"}],
    ("POST", "/v1/holds/{hold_id}/release"): [{"redeem"}],
    ("POST", "/v1/members/{member_id}/adjustments"): [{"adjust"}],
    ("POST", "/v1/members/{member_id}/transfers"): [{"transfer"}],
    ("GET", "/v1/members/{member_id}/balance"): [{"read"}],
    ("GET", "/v1/members/{member_id}/history"): [{"read"}],
    ("GET", "/v1/members/{member_id}/lots"): [{"read"}],
    ("GET", "/v1/events/live"): [{"read"}],
    ("GET", "/v1/program"): [{"read"}],
    ("PUT", "/v1/program/rules"): [{"rules"}],
    ("GET", "/v1/program/rules/{version}"): [{"read"}],
    ("POST", "/v1/channels"): [{"admin"}],
    ("GET", "/v1/channels"): [{"admin"}],
    ("POST", "/v1/api-keys"): [{"admin"}],
    ("DELETE", "/v1/api-keys/{key_id}"): [{"admin"}],
    ("POST", "/v1/campaigns"): [{"rules"}],
    ("GET", "/v1/campaigns"): [{"read"}],
    ("GET", "/v1/campaigns/{campaign_id}"): [{"read"}],
    ("POST", "/v1/campaigns/{campaign_id}/end"): [{"rules"}],
    ("GET", "/v1/members/{member_id}/campaigns"): [{"read"}],
    ("GET", "/v1/analytics/campaigns/{campaign_id}"): [{"analytics"}],
}
READ_ONLY_POSTS = {"/v1/quotes/earn"}
PROBLEM_JSON = "application/problem+json"


@pytest_asyncio.fixture
async def document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/schema/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> Iterator[Operation]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                yield method.upper(), path, operation


def commands(document: dict[str, Any]) -> list[Operation]:
    return [
        (method, path, op)
        for method, path, op in operations(document)
        if method in ("POST", "PUT") and path not in READ_ONLY_POSTS
    ]


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


async def test_every_command_requires_an_idempotency_key_and_says_when_it_replays(
    document: dict[str, Any],
) -> None:
    found = {(method, path) for method, path, _ in commands(document)}
    assert {("POST", "/v1/channels"), ("POST", "/v1/api-keys"), ("PUT", "/v1/program/rules")} <= found
    assert ("POST", "/v1/members/{member_id}/earn") in found

    for method, path, op in commands(document):
        headers = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "header"}
        key = headers.get("Idempotency-Key")
        assert key is not None, f"{method} {path} does not declare Idempotency-Key"
        assert key["required"] is True
        assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 200)
        successes = [r for status, r in op["responses"].items() if status.startswith("2")]
        assert successes, f"{method} {path}"
        for response in successes:
            assert "Idempotent-Replayed" in response.get("headers", {}), f"{method} {path}"

    quote = document["paths"]["/v1/quotes/earn"]["post"]
    assert "Idempotency-Key" not in {p["name"] for p in quote.get("parameters", [])}  # writes nothing
    assert "409" in quote["responses"]  # a merged or forgotten member, as the earn would be


async def test_every_error_is_problem_json_and_every_possible_status_is_declared(
    document: dict[str, Any],
) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert problem.get("additionalProperties", True) is not False  # problem types add members
    field = document["components"]["schemas"]["ProblemField"]
    assert set(field["required"]) == {"field", "message"}

    command_keys = {(method, path) for method, path, _ in commands(document)}
    for method, path, op in operations(document):
        statuses = {status for status in op["responses"] if status[0] in "45"}
        expected = {"401", "403", "429", "500", "503"}
        if "requestBody" in op:
            expected |= {"400", "415", "422"}
        if "{" in path:
            expected |= {"404"}
        if (method, path) in command_keys:
            expected |= {"409", "422"}
        assert expected <= statuses, f"{method} {path} lacks {sorted(expected - statuses)}"
        for status in statuses:
            content = op["responses"][status]["content"]
            assert set(content) == {PROBLEM_JSON}, f"{method} {path} {status}"
            assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
        for status in ("429", "503"):
            assert op["responses"][status]["headers"]["Retry-After"]["required"] is True


async def test_litestars_own_error_shape_is_gone(document: dict[str, Any]) -> None:
    for node in walk(document):
        if isinstance(node, dict) and isinstance(node.get("properties"), dict):
            assert not {"status_code", "extra"} & set(node["properties"]), node


async def test_each_operation_names_the_scopes_it_needs(document: dict[str, Any]) -> None:
    seen = set()
    for method, path, op in operations(document):
        scopes = op.get("x-scopes")
        assert scopes, f"{method} {path} names no scopes"
        seen.add((method, path))
        if (method, path) in SCOPES:
            assert [set(any_of) for any_of in scopes] == SCOPES[method, path], f"{method} {path}"
        # The security requirement lists the alternatives: one scope of every guard.
        requirements = [set(r["apiKey"]) for r in op["security"]]
        assert requirements
        for requirement in requirements:
            assert all(requirement & set(any_of) for any_of in scopes), f"{method} {path}"
        for any_of in scopes:
            assert any(f"`{scope}`" in op["description"] for scope in any_of), f"{method} {path}"
    assert set(SCOPES) <= seen
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


async def test_no_response_is_documented_as_anything_at_all(document: dict[str, Any]) -> None:
    created = document["paths"]["/v1/channels"]["post"]["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChannelOut"}
    for node in walk(document):
        if isinstance(node, dict):
            for union in ("oneOf", "anyOf"):
                assert {} not in node.get(union, []), node
