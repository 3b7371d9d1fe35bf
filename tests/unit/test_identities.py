"""One person, many spellings: identities normalise to one value, or are refused."""

from __future__ import annotations

import pytest

from domain.errors import InvalidIdentity
from domain.identities import Identity, IdentityKind, mask_identity, normalise_identity


@pytest.mark.parametrize(
    "spelling",
    [
        "13812345678",
        " 138 1234 5678 ",
        "+86 138 1234 5678",
        "0086-138-1234-5678",
        "(+86) 138-1234-5678",
        "+86 (138) 1234-5678",
    ],
)
def test_phone_spellings_normalise_to_e164(spelling: str) -> None:
    assert normalise_identity("phone", spelling) == Identity(kind="phone", value="+8613812345678")


def test_the_default_region_only_applies_without_a_country_code() -> None:
    london = normalise_identity("phone", "020 7946 0958", default_region="GB")
    assert london.value == "+442079460958"
    assert normalise_identity("phone", "+1 (415) 555-2671", default_region="GB").value == ("+14155552671")


@pytest.mark.parametrize("spelling", ["wei@example.com", "  Wei@Example.COM ", "WEI@EXAMPLE.COM"])
def test_email_spellings_normalise_to_lower_case(spelling: str) -> None:
    assert normalise_identity("email", spelling) == Identity(kind="email", value="wei@example.com")


def test_social_and_partner_ids_keep_their_case_but_not_the_prefix_case() -> None:
    assert normalise_identity("social", " WeChat:oAbC123 ").value == "wechat:oAbC123"
    assert normalise_identity("partner", "airline:FF-778899").value == "airline:FF-778899"
    assert normalise_identity("pos_card", " 6222 0001 ").value == "6222 0001"


@pytest.mark.parametrize(
    ("kind", "value", "field"),
    [
        ("fax", "12345", "kind"),
        ("phone", "12345", "value"),
        ("phone", "not a number", "value"),
        ("email", "wei.example.com", "value"),
        ("email", "wei@localhost", "value"),
        ("social", "oAbC123", "value"),
        ("social", "wechat:", "value"),
        ("partner", "airline: FF", "value"),
        ("device", "   ", "value"),
        ("app_user", "x" * 201, "value"),
        ("app_user", "tab\there", "value"),
    ],
)
def test_bad_identities_are_refused_naming_the_field(kind: str, value: str, field: str) -> None:
    with pytest.raises(InvalidIdentity) as refused:
        normalise_identity(kind, value)
    assert refused.value.extra == {"field": field}
    assert refused.value.code == "invalid_identity"


def test_every_kind_is_known() -> None:
    assert {k.value for k in IdentityKind} == {
        "phone",
        "email",
        "app_user",
        "pos_card",
        "social",
        "device",
        "partner",
    }


@pytest.mark.parametrize(
    ("identity", "masked"),
    [
        (Identity(kind="phone", value="+8613812345678"), "+86*******5678"),
        (Identity(kind="phone", value="+14155552671"), "+1******2671"),
        (Identity(kind="email", value="wei@example.com"), "w***@example.com"),
        (Identity(kind="social", value="wechat:oAbC123"), "we***23"),
        (Identity(kind="pos_card", value="6222000188889999"), "62***99"),
        (Identity(kind="device", value="abc12"), "*****"),
    ],
)
def test_masks_keep_just_enough_to_recognise(identity: Identity, masked: str) -> None:
    assert mask_identity(identity) == masked
