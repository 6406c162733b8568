"""Purpose limitation (vault.usecases.purpose_check): every rule, on subject rows built by hand.

Pure functions, no database and no KMS: each test states a subject's flags and checks
what the default catalog lets a read (or a write) do with them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from vault.catalog import Catalog
from vault.errors import InvalidArgument, OubliError, PermissionDenied, SubjectShredded
from vault.storage import SubjectKeyInfo
from vault.usecases.purpose_check import (
    authorize_read,
    authorize_subject,
    authorize_write,
    category_denial,
    readable_categories,
)
from vault.vocabulary import SubjectState

CATALOG = Catalog.load()
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
#: Values a subject row may carry that are not catalog names: none may leak into errors.
SUBJECT_ID = "aaaaaaaaaaaaaaaaaaaaaaaaaa"
KEY_ID = "bbbbbbbbbbbbbbbbbbbbbbbbbb"
GRANTED_AT = "2026-01-02T03:04:05.678901+00:00"
CANARY = "ada.lovelace@example.org"


def subject(state: str = SubjectState.ACTIVE, **flags: object) -> SubjectKeyInfo:
    return SubjectKeyInfo(
        SUBJECT_ID,
        "default",
        state,
        KEY_ID,
        b"\x01" * 40,
        1,
        WHEN,
        WHEN,
        **flags,  # type: ignore[arg-type]
    )


def with_consents(*names: str, state: str = SubjectState.ACTIVE, **flags: object) -> SubjectKeyInfo:
    return subject(state, consents={name: GRANTED_AT for name in names}, **flags)


def read(category: str, purpose: str, info: SubjectKeyInfo) -> None:
    authorize_read(CATALOG, CATALOG.category(category), purpose, info)


def denied(category: str, purpose: str, info: SubjectKeyInfo) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as caught:
        read(category, purpose, info)
    return caught.value


CATALOG_NAMES = (
    set(CATALOG.categories)
    | set(CATALOG.purposes)
    | set(CATALOG.consents)
    | {f for c in CATALOG.categories.values() for f in c.fields}
)


def assert_clean(error: OubliError) -> None:
    """The error holds catalog names (and ids in their own metadata keys), no values."""
    text = str(error)
    for value in (KEY_ID, GRANTED_AT, CANARY, "2026"):
        assert value not in text
    assert SUBJECT_ID not in text  # ids go to metadata, never into the message
    for key, value in error.metadata.items():
        if key == "subject_id":
            assert value == SUBJECT_ID
        elif key == "field":
            assert value in {"purpose", "category"}
        else:
            assert value in CATALOG_NAMES, (key, value)
    # Every identifier-like word in the message is English prose or a catalog name.
    for word in text.replace(",", " ").replace(";", " ").replace(":", " ").split():
        assert "@" not in word and "=" not in word


# --- purpose per category -------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "purpose"),
    [
        ("billing", "marketing"),
        ("credentials", "billing"),
        ("technical_logs", "billing"),
        ("usage", "support"),
        ("identity", "security"),
        ("contact", "analytics"),
        ("payment_method", "service"),
    ],
)
def test_purpose_not_allowed_for_category(category: str, purpose: str) -> None:
    info = with_consents("marketing", "card_storage", "location")
    error = denied(category, purpose, info)
    assert error.reason == "PURPOSE_NOT_ALLOWED"
    assert error.metadata == {"category": category, "purpose": purpose}
    assert category in error.message and purpose in error.message
    assert_clean(error)


@pytest.mark.parametrize(
    ("category", "purpose"),
    [
        ("identity", "service"),
        ("contact", "support"),
        ("billing", "accounting"),
        ("technical_logs", "security"),
        ("usage", "analytics"),
        ("support", "legal_claims"),
        ("payment_method", "billing"),
    ],
)
def test_declared_purpose_is_allowed(category: str, purpose: str) -> None:
    assert authorize_read(CATALOG, CATALOG.category(category), purpose, subject()).name == purpose


def test_every_declared_purpose_of_every_category_is_allowed() -> None:
    info = with_consents(*CATALOG.consents)
    for name, spec in CATALOG.categories.items():
        for purpose in spec.purposes:
            read(name, purpose, info)
        for purpose in set(CATALOG.purposes) - spec.purposes:
            if CATALOG.purposes[purpose].subject_right:
                read(name, purpose, info)  # access and portability cover everything
            else:
                assert denied(name, purpose, info).reason == "PURPOSE_NOT_ALLOWED"


# --- objection ------------------------------------------------------------------------


def test_objection_refuses_that_purpose_only() -> None:
    info = subject(objections=frozenset({"analytics"}))
    error = denied("usage", "analytics", info)
    assert error.reason == "OBJECTED"
    assert error.metadata == {"purpose": "analytics"}
    assert_clean(error)
    read("usage", "service", info)
    read("identity", "service", info)
    read("usage", "access", info)  # the subject's own copy is never refused


def test_objection_to_marketing_wins_over_consent() -> None:
    info = with_consents("marketing", objections=frozenset({"marketing"}))
    assert denied("contact", "marketing", info).reason == "OBJECTED"
    read("contact", "service", info)


# --- consent --------------------------------------------------------------------------


def test_purpose_needing_consent() -> None:
    error = denied("contact", "marketing", subject())
    assert error.reason == "CONSENT_MISSING"
    assert error.metadata == {"purpose": "marketing", "consent": "marketing"}
    assert_clean(error)
    # another consent does not count
    assert denied("contact", "marketing", with_consents("location")).reason == "CONSENT_MISSING"
    read("contact", "marketing", with_consents("marketing"))


def test_category_needing_consent() -> None:
    error = denied("payment", "billing", with_consents("marketing"))
    assert error.reason == "CONSENT_MISSING"
    assert error.metadata == {"category": "payment", "consent": "card_storage"}
    assert_clean(error)
    read("payment", "billing", with_consents("card_storage"))
    assert denied("location", "security", subject()).reason == "CONSENT_MISSING"
    read("location", "security", with_consents("location"))


def test_subject_rights_read_consent_categories_without_the_consent() -> None:
    # Data stored under a consent since withdrawn is destroyed; whatever is left is the
    # subject's own, and access or portability never needs a consent.
    read("payment", "access", subject())
    read("payment", "portability", subject())


# --- restriction ----------------------------------------------------------------------


def test_restriction_refuses_all_but_allowed_purposes() -> None:
    info = with_consents(*CATALOG.consents, restricted=True)
    for name, purpose in CATALOG.purposes.items():
        categories = [c for c, spec in CATALOG.categories.items() if name in spec.purposes]
        if purpose.subject_right:
            for category in CATALOG.categories:
                read(category, name, info)
        elif purpose.allowed_under_restriction:
            for category in categories:
                read(category, name, info)
        else:
            with pytest.raises(PermissionDenied) as caught:
                authorize_subject(CATALOG, name, info)
            assert caught.value.reason == "RESTRICTED"
            assert caught.value.metadata == {"purpose": name}
            assert_clean(caught.value)
    assert {n for n, p in CATALOG.purposes.items() if p.allowed_under_restriction} == {
        "legal_claims"
    }


def test_restriction_spares_legal_claims_access_and_portability() -> None:
    info = subject(restricted=True)
    read("identity", "legal_claims", info)
    read("billing", "legal_claims", info)
    read("identity", "access", info)
    read("credentials", "portability", info)
    assert denied("identity", "service", info).reason == "RESTRICTED"
    assert denied("billing", "accounting", info).reason == "RESTRICTED"
    # legal_claims still respects the category's own purposes
    assert denied("credentials", "legal_claims", info).reason == "PURPOSE_NOT_ALLOWED"


def test_restriction_applies_to_closed_accounts_too() -> None:
    info = subject(SubjectState.CLOSED, restricted=True)
    assert denied("identity", "service", info).reason == "RESTRICTED"
    read("identity", "legal_claims", info)


# --- erased subjects ------------------------------------------------------------------


def test_held_subject_only_legal_hold_categories_for_their_legal_purposes() -> None:
    info = replace(subject(SubjectState.HELD), wrapped_dek=None)
    legal = set(CATALOG.legal_hold_categories)
    assert legal == {"billing"}
    read("billing", "accounting", info)
    read("billing", "legal_claims", info)
    read("billing", "access", info)
    read("billing", "portability", info)
    error = denied("billing", "billing", info)
    assert error.reason == "ERASED"
    assert error.metadata == {"category": "billing", "purpose": "billing"}
    assert_clean(error)
    assert denied("billing", "service", info).reason == "ERASED"
    for name in set(CATALOG.categories) - legal:
        for purpose in ("service", "legal_claims", "access", "portability"):
            error = denied(name, purpose, info)
            assert error.reason == "ERASED"
            assert error.metadata == {"category": name}
            assert_clean(error)


def test_held_subject_readable_categories() -> None:
    info = replace(subject(SubjectState.HELD), wrapped_dek=None)
    assert readable_categories(CATALOG, "accounting", info) == ["billing"]
    assert readable_categories(CATALOG, "access", info) == ["billing"]
    assert readable_categories(CATALOG, "service", info) == []


@pytest.mark.parametrize("state", [SubjectState.SHREDDED, SubjectState.SHREDDING])
@pytest.mark.parametrize("purpose", ["service", "access", "accounting", "legal_claims"])
def test_erased_or_erasing_subject_is_refused(state: str, purpose: str) -> None:
    info = replace(subject(state), wrapped_dek=None)
    with pytest.raises(SubjectShredded) as caught:
        authorize_subject(CATALOG, purpose, info)
    assert caught.value.metadata == {"subject_id": SUBJECT_ID}
    assert_clean(caught.value)
    with pytest.raises(SubjectShredded):
        read("billing", purpose, info)
    with pytest.raises(SubjectShredded):
        readable_categories(CATALOG, purpose, info)


# --- purposes themselves --------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["", "nonsense", CANARY, "Service", "service "])
def test_unknown_or_empty_purpose_is_invalid_argument(purpose: str) -> None:
    for info in (subject(), replace(subject(SubjectState.SHREDDED), wrapped_dek=None)):
        with pytest.raises(InvalidArgument) as caught:
            authorize_subject(CATALOG, purpose, info)
        assert caught.value.field == "purpose"
        if purpose.strip():
            assert purpose.strip() not in str(caught.value)  # caller input is not echoed
        assert_clean(caught.value)
        with pytest.raises(InvalidArgument):
            readable_categories(CATALOG, purpose, info)


# --- multi-category reads -------------------------------------------------------------


def test_readable_categories_filters_by_purpose_and_consent() -> None:
    assert readable_categories(CATALOG, "billing", subject()) == [
        "billing",
        "contact",
        "identity",
        "payment_method",
    ]
    assert readable_categories(CATALOG, "billing", with_consents("card_storage")) == [
        "billing",
        "contact",
        "identity",
        "payment",
        "payment_method",
    ]
    assert readable_categories(CATALOG, "security", subject()) == [
        "credentials",
        "technical_logs",
    ]
    assert readable_categories(CATALOG, "security", with_consents("location")) == [
        "credentials",
        "location",
        "technical_logs",
    ]
    assert readable_categories(CATALOG, "access", subject()) == sorted(CATALOG.categories)
    assert readable_categories(CATALOG, "portability", subject(SubjectState.CLOSED)) == sorted(
        CATALOG.categories
    )


def test_readable_categories_applies_subject_rules_first() -> None:
    with pytest.raises(PermissionDenied) as caught:
        readable_categories(CATALOG, "marketing", subject())
    assert caught.value.reason == "CONSENT_MISSING"
    assert readable_categories(CATALOG, "marketing", with_consents("marketing")) == ["contact"]
    with pytest.raises(PermissionDenied) as caught:
        readable_categories(CATALOG, "analytics", subject(objections=frozenset({"analytics"})))
    assert caught.value.reason == "OBJECTED"
    with pytest.raises(PermissionDenied) as caught:
        readable_categories(CATALOG, "service", subject(restricted=True))
    assert caught.value.reason == "RESTRICTED"
    assert readable_categories(CATALOG, "legal_claims", subject(restricted=True)) == [
        "billing",
        "contact",
        "identity",
        "support",
        "technical_logs",
    ]


def test_category_denial_returns_none_or_the_denial() -> None:
    purpose = CATALOG.purpose("billing")
    assert category_denial(CATALOG.category("billing"), purpose, subject()) is None
    denial = category_denial(CATALOG.category("usage"), purpose, subject())
    assert denial is not None and denial.reason == "PURPOSE_NOT_ALLOWED"


# --- writes ---------------------------------------------------------------------------


def test_authorize_write_needs_the_category_consent() -> None:
    with pytest.raises(PermissionDenied) as caught:
        authorize_write(CATALOG.category("payment"), subject())
    assert caught.value.reason == "CONSENT_MISSING"
    assert caught.value.metadata == {"category": "payment", "consent": "card_storage"}
    assert_clean(caught.value)
    with pytest.raises(PermissionDenied):
        authorize_write(CATALOG.category("payment"), with_consents("location", "marketing"))
    authorize_write(CATALOG.category("payment"), with_consents("card_storage"))
    with pytest.raises(PermissionDenied):
        authorize_write(CATALOG.category("location"), subject())
    authorize_write(CATALOG.category("location"), with_consents("location"))
    # categories without a consent need none, whatever the subject's other flags
    flagged = subject(restricted=True, objections=frozenset({"marketing", "analytics"}))
    for spec in CATALOG.categories.values():
        if not spec.consent:
            authorize_write(spec, flagged)
