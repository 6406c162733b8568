"""Portability export and access report: a subject's data decrypted into JSON.

Both shapes are published as JSON Schemas (``vault/schemas/``) and documented in
docs/export.md. Records are grouped by category and sorted by record id, so two
exports of unchanged data are byte-identical apart from ``exported_at``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vault.catalog import Category
from vault.service import RecordView, SubjectView, VaultService

EXPORT_FORMAT = "oubli.export.v1"
ACCESS_REPORT_FORMAT = "oubli.access_report.v1"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _record(record: RecordView, *, with_retention: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "record_id": record.record_id,
        "version": record.version,
        "origin": record.origin,
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
        "fields": dict(sorted(record.fields.items())),
    }
    if with_retention:
        out["retain_until"] = _time(record.retain_until)
    return out


def _category(spec: Category | None) -> dict[str, Any]:
    if spec is None:  # a category since removed from the catalog
        return {"description": "", "purposes": [], "legal_basis": "unknown"}
    return {
        "description": spec.description,
        "purposes": sorted(spec.purposes),
        "legal_basis": spec.legal_basis.value,
    }


def _grouped(records: list[RecordView]) -> dict[str, list[RecordView]]:
    groups: dict[str, list[RecordView]] = {}
    for record in records:
        groups.setdefault(record.category, []).append(record)
    return groups


def export_document(
    vault: VaultService, subject_id: str, now: datetime, purpose: str = "portability"
) -> dict[str, Any]:
    info, records = vault.all_records(subject_id, purpose)
    groups = _grouped(records)
    return {
        "format": EXPORT_FORMAT,
        "exported_at": _time(now),
        "subject": {
            "subject_id": info.subject_id,
            "state": info.state,
            "created_at": _time(info.created_at),
        },
        "categories": {
            name: {
                **_category(vault.catalog.categories.get(name)),
                "records": [_record(r, with_retention=False) for r in groups[name]],
            }
            for name in sorted(groups)
        },
    }


def export_json(
    vault: VaultService, subject_id: str, now: datetime, purpose: str = "portability"
) -> bytes:
    document = export_document(vault, subject_id, now, purpose)
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def _retention_text(spec: Category | None, subject: SubjectView) -> str:
    if spec is None:
        return ""
    text = spec.retention.describe()
    if spec.retention.kind.value == "account" and subject.scheduled_shred_at is not None:
        text += f"; this account is scheduled for erasure at {_time(subject.scheduled_shred_at)}"
    return text


def access_report(
    vault: VaultService,
    subject_id: str,
    now: datetime,
    requests: list[dict[str, Any]],
    readers: Mapping[str, set[str]] | None = None,
) -> dict[str, Any]:
    """Right of access: all data plus, per category, origin, purposes, legal basis,
    recipients and retention; the subject's restriction, objections and consents."""
    info, records = vault.all_records(subject_id, "access")
    subject = vault.get_subject(subject_id)
    groups = _grouped(records)
    return {
        "format": ACCESS_REPORT_FORMAT,
        "generated_at": _time(now),
        "subject": {
            "subject_id": info.subject_id,
            "state": info.state,
            "created_at": _time(info.created_at),
            "closed_at": _time(info.closed_at),
            "scheduled_erasure_at": _time(info.scheduled_shred_at),
            "restricted": info.restricted,
            "objections": sorted(info.objections),
            # consent -> when granted; stored as isoformat, shown like every other time
            "consents": {
                name: granted.replace("+00:00", "Z")
                for name, granted in sorted(info.consents.items())
            },
        },
        "categories": {
            name: {
                **_category(vault.catalog.categories.get(name)),
                "recipients": list(
                    vault.catalog.categories[name].recipients
                    if name in vault.catalog.categories
                    else ()
                ),
                # Who actually read it, from the audit trail (declared ones above).
                "recipients_seen": sorted((readers or {}).get(name, set())),
                "origins": sorted({r.origin for r in groups[name]}),
                "retention": _retention_text(vault.catalog.categories.get(name), subject),
                "records": [_record(r, with_retention=True) for r in groups[name]],
            }
            for name in sorted(groups)
        },
        "rights_requests": requests,
    }
