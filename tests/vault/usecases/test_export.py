"""Portability export and access report (vault.usecases.export) against their JSON Schemas.

Both databases, in-memory KMS, a fake clock. The documents are validated with
jsonschema (draft 2020-12) and a strict date-time format check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from tests.clock import FakeClock
from tests.memory_kms import InMemoryKeyManager
from tests.stack import vault_service
from vault.api.messages import request_json
from vault.catalog import Catalog
from vault.errors import InvalidArgument, PermissionDenied, SubjectShredded
from vault.storage import Storage
from vault.usecases.erasure import Erasure
from vault.usecases.export import (
    ACCESS_REPORT_FORMAT,
    EXPORT_FORMAT,
    access_report,
    export_document,
)
from vault.usecases.retention import RetentionJob
from vault.usecases.rights import RightsService
from vault.usecases.service import VaultService

Builder = Callable[..., VaultService]
T0 = datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
CATALOG = Catalog.load()


def _schema(name: str) -> dict[str, Any]:
    text = resources.files("vault").joinpath(f"schemas/{name}").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _utc_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not value.endswith("Z"):
        raise ValueError("not UTC")
    parsed = datetime.fromisoformat(value[:-1] + "+00:00")
    return parsed.utcoffset() == timedelta(0) and "T" in value


EXPORT_SCHEMA = _schema("export.v1.schema.json")
REPORT_SCHEMA = _schema("access_report.v1.schema.json")


def validate(document: dict[str, Any], schema: dict[str, Any]) -> None:
    Draft202012Validator(schema, format_checker=FORMATS).validate(document)
    # what goes over the wire: the JSON text, which must round-trip unchanged
    assert json.loads(json.dumps(document, ensure_ascii=False)) == document


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def vault(
    storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder, clock: FakeClock
) -> VaultService:
    return make_vault(storage, memory_kms, clock=clock)


@pytest.fixture
def rights(vault: VaultService) -> RightsService:
    return RightsService(vault)


def customer(vault: VaultService, rights: RightsService) -> str:
    """A subject with a record in most categories."""
    sid = vault.create_subject().subject_id
    rights.grant_consent(sid, "card_storage")
    rights.grant_consent(sid, "marketing")
    vault.create_record(sid, "identity", {"given_name": "Ada", "family_name": "L"}, "customer")
    vault.create_record(sid, "contact", {"email": "ada@example.org", "city": "Lyon"}, "customer")
    vault.create_record(sid, "billing", {"invoice_number": "INV-1", "amount": "9"}, "billing")
    vault.create_record(sid, "billing", {"invoice_number": "INV-2", "amount": "7"}, "billing")
    vault.create_record(sid, "payment", {"card_number": "4111111111111111"}, "customer")
    vault.create_record(sid, "payment_method", {"method": "card"}, "customer")
    vault.create_record(sid, "credentials", {"username": "ada"}, "control-panel")
    vault.create_record(sid, "technical_logs", {"ip_address": "192.0.2.1"}, "server")
    vault.create_record(sid, "support", {"ticket_id": "T-1"}, "support")
    return sid


# --- portability export ---------------------------------------------------------------


def test_export_document(vault: VaultService, rights: RightsService, clock: FakeClock) -> None:
    sid = customer(vault, rights)
    clock.now = T0 + timedelta(hours=1)
    document = export_document(vault, sid, clock.now)
    validate(document, EXPORT_SCHEMA)
    assert document["format"] == EXPORT_FORMAT
    assert document["exported_at"] == "2026-02-03T05:05:06.789000Z"
    assert document["subject"] == {
        "subject_id": sid,
        "state": "active",
        "created_at": "2026-02-03T04:05:06.789000Z",
    }
    categories = document["categories"]
    assert list(categories) == [
        "billing",
        "contact",
        "credentials",
        "identity",
        "payment",
        "payment_method",
        "support",
        "technical_logs",
    ]
    for name, body in categories.items():
        spec = CATALOG.categories[name]
        assert body["description"] == spec.description
        assert body["purposes"] == sorted(spec.purposes)
        assert body["legal_basis"] == spec.legal_basis.value
        ids = [r["record_id"] for r in body["records"]]
        assert ids == sorted(ids)
        for record in body["records"]:
            assert "retain_until" not in record  # export only: the report has it
    assert categories["billing"]["legal_basis"] == "legal_obligation"
    assert categories["payment"]["legal_basis"] == "consent"
    assert categories["payment"]["purposes"] == ["billing"]
    assert {r["fields"]["invoice_number"] for r in categories["billing"]["records"]} == {
        "INV-1",
        "INV-2",
    }
    assert categories["contact"]["records"][0]["fields"] == {
        "city": "Lyon",
        "email": "ada@example.org",
    }
    # deterministic: same data, same document (but for exported_at)
    assert export_document(vault, sid, clock.now) == document


def test_export_for_billing_holds_only_billing_categories(
    vault: VaultService, rights: RightsService
) -> None:
    sid = customer(vault, rights)
    document = export_document(vault, sid, T0, purpose="billing")
    validate(document, EXPORT_SCHEMA)
    assert list(document["categories"]) == [
        "billing",
        "contact",
        "identity",
        "payment",
        "payment_method",
    ]
    for body in document["categories"].values():
        assert "billing" in body["purposes"]
    # without the card consent the card is not billing-readable any more (it is gone)
    rights.withdraw_consent(sid, "card_storage")
    document = export_document(vault, sid, T0, purpose="billing")
    assert "payment" not in document["categories"]
    validate(document, EXPORT_SCHEMA)


def test_export_refusals(vault: VaultService, rights: RightsService) -> None:
    sid = customer(vault, rights)
    with pytest.raises(InvalidArgument):
        export_document(vault, sid, T0, purpose="")
    with pytest.raises(InvalidArgument):
        export_document(vault, sid, T0, purpose="everything")
    rights.restrict(sid)
    with pytest.raises(PermissionDenied):
        export_document(vault, sid, T0, purpose="billing")
    validate(export_document(vault, sid, T0), EXPORT_SCHEMA)  # portability is a right
    legal = export_document(vault, sid, T0, purpose="legal_claims")
    assert list(legal["categories"]) == [
        "billing",
        "contact",
        "identity",
        "support",
        "technical_logs",
    ]


def test_export_of_an_empty_subject(vault: VaultService) -> None:
    sid = vault.create_subject().subject_id
    document = export_document(vault, sid, T0)
    validate(document, EXPORT_SCHEMA)
    assert document["categories"] == {}


def test_export_schema_rejects_what_it_should(vault: VaultService, rights: RightsService) -> None:
    document = export_document(vault, customer(vault, rights), T0)
    for mutate in (
        lambda d: d.update(extra=1),
        lambda d: d["subject"].update(state="shredded"),
        lambda d: d["categories"]["billing"].update(legal_basis="whim"),
        lambda d: d["categories"]["billing"]["records"][0]["fields"].update(amount=""),
        lambda d: d.update(exported_at="2026-02-03T05:05:06+00:00"),
    ):
        broken = json.loads(json.dumps(document))
        mutate(broken)
        with pytest.raises(ValidationError):
            validate(broken, EXPORT_SCHEMA)


# --- access report --------------------------------------------------------------------


def report(vault: VaultService, rights: RightsService, sid: str, now: datetime) -> dict[str, Any]:
    requests = [request_json(r) for r in rights.list_requests(sid)]
    document = access_report(vault, sid, now, requests)
    validate(document, REPORT_SCHEMA)
    return document


def test_access_report_schema_is_valid() -> None:
    Draft202012Validator.check_schema(REPORT_SCHEMA)
    assert REPORT_SCHEMA["properties"]["format"] == {"const": ACCESS_REPORT_FORMAT}


def test_access_report_of_an_active_subject(
    vault: VaultService, rights: RightsService, clock: FakeClock
) -> None:
    sid = customer(vault, rights)
    rights.object_to(sid, "analytics")
    ticket = vault.list_records(sid, "support", purpose="support").records[0]
    clock.now = T0 + timedelta(days=2)
    vault.record_event(sid, ticket.record_id, "resolved")
    access = rights.open_request(sid, "access")
    erasure = rights.open_request(sid, "erasure")
    rights.close_request(erasure.request_id, "rejected")

    document = report(vault, rights, sid, clock.now)
    assert document["format"] == ACCESS_REPORT_FORMAT
    assert document["generated_at"] == "2026-02-05T04:05:06.789000Z"
    assert document["subject"] == {
        "subject_id": sid,
        "state": "active",
        "created_at": "2026-02-03T04:05:06.789000Z",
        "closed_at": None,
        "scheduled_erasure_at": None,
        "restricted": False,
        "objections": ["analytics"],
        "consents": {
            "card_storage": "2026-02-03T04:05:06.789000Z",
            "marketing": "2026-02-03T04:05:06.789000Z",
        },
    }
    categories = document["categories"]
    # the subject's own copy: every category it has records in, whatever the purpose
    assert set(categories) == {
        "billing",
        "contact",
        "credentials",
        "identity",
        "payment",
        "payment_method",
        "support",
        "technical_logs",
    }
    for name, body in categories.items():
        spec = CATALOG.categories[name]
        assert body["description"] == spec.description
        assert body["purposes"] == sorted(spec.purposes)
        assert body["legal_basis"] == spec.legal_basis.value
        assert body["recipients"] == list(spec.recipients)
        assert body["origins"] == sorted({r["origin"] for r in body["records"]})
        assert body["retention"] == spec.retention.describe()
    assert categories["credentials"]["origins"] == ["control-panel"]
    assert categories["billing"]["recipients"] == [
        "billing-service",
        "accountants",
        "tax-authorities",
    ]
    assert categories["technical_logs"]["retention"] == "12 months after creation"
    assert categories["technical_logs"]["records"][0]["retain_until"] == "2027-02-01T00:00:00Z"
    assert categories["support"]["records"][0]["retain_until"] == "2028-02-01T00:00:00Z"
    assert categories["contact"]["records"][0]["retain_until"] is None
    assert categories["billing"]["retention"] == (
        "36 months after account closure, also after an erasure request"
    )
    expected = [
        {
            "request_id": access.request_id,
            "kind": "access",
            "status": "open",
            "received_at": "2026-02-05T04:05:06.789000Z",
            "due_at": "2026-03-07T04:05:06.789000Z",
            "completed_at": None,
        },
        {
            "request_id": erasure.request_id,
            "kind": "erasure",
            "status": "rejected",
            "received_at": "2026-02-05T04:05:06.789000Z",
            "due_at": "2026-03-07T04:05:06.789000Z",
            "completed_at": "2026-02-05T04:05:06.789000Z",
        },
    ]
    # same due time: ordered by (random) request id
    assert document["rights_requests"] == sorted(expected, key=lambda r: str(r["request_id"]))


def test_access_report_of_a_restricted_closed_subject(
    vault: VaultService, rights: RightsService, clock: FakeClock
) -> None:
    sid = customer(vault, rights)
    rights.restrict(sid)
    clock.now = T0 + timedelta(days=1)
    vault.close_account(sid)
    document = report(vault, rights, sid, clock.now)
    subject = document["subject"]
    assert subject["state"] == "closed" and subject["restricted"] is True
    assert subject["closed_at"] == "2026-02-04T04:05:06.789000Z"
    assert subject["scheduled_erasure_at"] == "2026-08-04T04:05:06.789000Z"
    contact = document["categories"]["contact"]
    assert contact["retention"].endswith(
        "; this account is scheduled for erasure at 2026-08-04T04:05:06.789000Z"
    )
    # rules other than 'account' do not mention the scheduled erasure
    assert document["categories"]["technical_logs"]["retention"] == "12 months after creation"
    assert document["rights_requests"] == []


def test_access_report_of_a_held_subject(
    vault: VaultService, rights: RightsService, clock: FakeClock, erasure: Erasure
) -> None:
    sid = customer(vault, rights)
    request = rights.open_request(sid, "erasure")
    clock.now = T0 + timedelta(days=3)
    vault.close_account(sid)
    clock.now = T0 + timedelta(days=200)
    summary = RetentionJob(erasure).run()
    assert summary.subjects_erased == 1
    rights.close_request(request.request_id)

    document = report(vault, rights, sid, clock.now)
    subject = document["subject"]
    assert subject["state"] == "held"
    assert subject["closed_at"] == "2026-02-06T04:05:06.789000Z"
    assert subject["scheduled_erasure_at"] is None  # carried out
    # only the legally held invoices are left, with their deadline
    assert list(document["categories"]) == ["billing"]
    billing = document["categories"]["billing"]
    assert len(billing["records"]) == 2
    for record in billing["records"]:
        assert record["retain_until"] == "2029-02-01T00:00:00Z"  # closure + 36 months
    assert billing["purposes"] == ["accounting", "billing", "legal_claims", "service"]
    assert billing["legal_basis"] == "legal_obligation"
    [answered] = document["rights_requests"]
    assert answered["status"] == "completed" and answered["kind"] == "erasure"
    assert answered["completed_at"] == "2026-08-22T04:05:06.789000Z"

    # once the hold ends there is nothing left to report
    clock.now = datetime(2029, 2, 1, tzinfo=UTC)
    RetentionJob(erasure).run()
    with pytest.raises(SubjectShredded):
        access_report(vault, sid, clock.now, [])


def test_access_report_of_a_category_no_longer_in_the_catalog(
    storage: Storage,
    memory_kms: InMemoryKeyManager,
    vault: VaultService,
    rights: RightsService,
    clock: FakeClock,
) -> None:
    sid = customer(vault, rights)
    reduced = Catalog(
        {k: v for k, v in CATALOG.categories.items() if k != "credentials"},
        CATALOG.purposes,
        CATALOG.settings,
    )
    later = vault_service(storage, memory_kms, reduced, clock=clock)
    document = access_report(later, sid, clock.now, [])
    validate(document, REPORT_SCHEMA)
    assert "credentials" not in document["categories"]  # not readable under the new catalog


def test_access_report_schema_rejects_what_it_should(
    vault: VaultService, rights: RightsService
) -> None:
    sid = customer(vault, rights)
    rights.open_request(sid, "access")
    document = report(vault, rights, sid, T0)
    for mutate in (
        lambda d: d.update(extra=1),
        lambda d: d["subject"].update(state="shredded"),
        lambda d: d["subject"].pop("closed_at"),
        lambda d: d["subject"]["consents"].update(marketing="yesterday"),
        lambda d: d["subject"]["consents"].update(marketing="2026-02-03T04:05:06+00:00"),
        lambda d: d["categories"]["contact"].pop("recipients"),
        lambda d: d["categories"]["contact"].update(extra=[]),
        lambda d: d["categories"]["contact"]["records"][0].pop("retain_until"),
        lambda d: d["categories"]["contact"]["records"][0].update(retain_until="never"),
        lambda d: d["rights_requests"][0].update(status="pending"),
        lambda d: d["rights_requests"][0].update(kind="deletion"),
        lambda d: d["rights_requests"][0].pop("completed_at"),
    ):
        broken = json.loads(json.dumps(document))
        mutate(broken)
        with pytest.raises(ValidationError):
            validate(broken, REPORT_SCHEMA)
