"""Members read by a batch are the same members to every later command: a merge of members a
batch loaded (and refused something of, so they stayed cached as loaded) is recorded."""

from __future__ import annotations

from tests.api.conftest import Pos


async def test_members_a_batch_loaded_and_refused_can_be_merged(pos: Pos) -> None:
    api = pos.api
    source, target = await api.enrol(pos.key), await api.enrol(pos.key)
    purchase = {"amount": "100.00", "currency": "CNY"}
    for member, ref in ((source, "M-1"), (target, "M-2")):
        earned = await api.post(f"/v1/members/{member}/earn", {**purchase, "order_ref": ref}, key=pos.key)
        assert earned.status_code == 201, earned.text
    api.services.repository.forget_all()  # the next reads come from the store, as after a restart

    # An offline POS sends the same orders again: the batch reads both members together and
    # refuses both items (the orders are taken), so nothing of theirs changes.
    batch = {"items": [{"op": "earn", "member_id": member, "idempotency_key": f"again-{ref}",
                        "body": {**purchase, "order_ref": ref}}
                       for member, ref in ((source, "M-1"), (target, "M-2"))]}  # fmt: skip
    answered = await api.post("/v1/batch", batch, key=pos.key)
    assert answered.status_code == 200, answered.text
    refusals = [r["body"]["type"].rsplit("/", 1)[-1] for r in answered.json()["results"]]
    assert refusals == ["duplicate_order", "duplicate_order"]

    merger = await api.channel_key("crm", ["members", "privacy", "read"], kind="internal")
    merged = await api.post(f"/v1/members/{target}/merge", {"source_member_id": source}, key=merger)
    assert merged.status_code == 201, merged.text
    assert merged.json()["balance"]["available"] == 200
