"""Channel identities of a member: kinds, normalisation and masking."""

from __future__ import annotations

import re
from enum import StrEnum

import msgspec
import phonenumbers

from domain.errors import InvalidIdentity

MAX_IDENTITY_LENGTH = 200

_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
# `network:id` (social) and `partner:id` (partner): a short lower-case prefix, then an id
# that is case-sensitive (WeChat open-ids are) and has no whitespace.
_PREFIXED = re.compile(r"(?P<prefix>[a-z][a-z0-9_-]{0,31}):(?P<id>\S+)")


class IdentityKind(StrEnum):
    """The kinds of identity a channel may present."""

    PHONE = "phone"
    EMAIL = "email"
    APP_USER = "app_user"
    POS_CARD = "pos_card"
    SOCIAL = "social"
    DEVICE = "device"
    PARTNER = "partner"


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """One normalised identity; belongs to at most one active member."""

    kind: str
    value: str


def normalise_identity(kind: str, value: str, *, default_region: str = "CN") -> Identity:
    """Return the canonical form of an identity, or raise InvalidIdentity naming the field."""
    try:
        identity_kind = IdentityKind(kind)
    except ValueError:
        raise InvalidIdentity(f"unknown identity kind {kind!r}", field="kind") from None
    text = value.strip()
    if not text:
        raise InvalidIdentity("identity value must not be empty", field="value")
    if len(text) > MAX_IDENTITY_LENGTH or not text.isprintable():
        raise InvalidIdentity(
            f"identity value must be printable and at most {MAX_IDENTITY_LENGTH} characters",
            field="value",
        )
    if identity_kind is IdentityKind.PHONE:
        text = _normalise_phone(text, default_region)
    elif identity_kind is IdentityKind.EMAIL:
        text = text.lower()
        if _EMAIL.fullmatch(text) is None:
            raise InvalidIdentity("email must look like local@domain", field="value")
    elif identity_kind in (IdentityKind.SOCIAL, IdentityKind.PARTNER):
        text = _normalise_prefixed(text, identity_kind)
    return Identity(kind=identity_kind.value, value=text)


def _normalise_phone(text: str, default_region: str) -> str:
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidIdentity("phone is not a phone number", field="value") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentity("phone is not a valid number", field="value")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _normalise_prefixed(text: str, kind: IdentityKind) -> str:
    prefix, sep, rest = text.partition(":")
    candidate = f"{prefix.lower()}{sep}{rest}"
    if _PREFIXED.fullmatch(candidate) is None:
        shape = "network:id" if kind is IdentityKind.SOCIAL else "partner:id"
        raise InvalidIdentity(f"{kind.value} identity must look like {shape}", field="value")
    return candidate


def mask_identity(identity: Identity) -> str:
    """Show enough of an identity to recognise it, not enough to use it."""
    value = identity.value
    if identity.kind == IdentityKind.PHONE and value.startswith("+"):
        try:
            country = str(phonenumbers.parse(value, None).country_code)
        except phonenumbers.NumberParseException:
            return _mask_middle(value)
        national = value[1 + len(country) :]
        return f"+{country}{'*' * max(0, len(national) - 4)}{national[-4:]}"
    if identity.kind == IdentityKind.EMAIL and "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    return _mask_middle(value)


def _mask_middle(value: str) -> str:
    # Short values would be mostly revealed by keeping four characters.
    if len(value) < 7:
        return "*" * len(value)
    return f"{value[:2]}***{value[-2:]}"
