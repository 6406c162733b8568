"""Portability export and access report: a subject's data decrypted into JSON.

Both shapes are published as JSON Schemas (``vault/schemas/``) and documented in
docs/export.md. Records are grouped by category and sorted by record id, so two
exports of unchanged data are byte-identical apart from ``exported_at``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from vault.access import caller_scope
from vault.catalog import Category
from vault.storage import RecordLike
from vault.usecases.service import RecordView, SubjectView, VaultService

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


#: Records read, decrypted and sent per chunk of a streamed export (~0.5 MiB of 1 KiB
#: records): the server holds one page at a time, whatever the subject's size.
EXPORT_PAGE = 500


@functools.lru_cache(maxsize=4096)
def _time_json(value: datetime) -> str:
    """A time as a JSON string (cached: records written together share their times).
    A naive time is UTC (export pages carry the stored form, Storage.records_page)."""
    return f'"{_time(value if value.tzinfo is not None else value.replace(tzinfo=UTC))}"'


@functools.lru_cache(maxsize=1024)
def _origin_json(origin: str) -> str:
    """An origin as a JSON string (cached: a subject's records come from few origins)."""
    return _dumps(origin)


def _record_line(stored: RecordLike, fields_json: str) -> str:
    """One record of an export, as :func:`_record` would give it (without retention),
    with the fields' canonical JSON spliced in as decrypted (authenticated, never parsed
    and re-encoded: RecordCrypto.open_page)."""
    return (
        f'{{"record_id": "{stored.record_id}", "version": {stored.version}, '
        f'"origin": {_origin_json(stored.origin)}, '
        f'"created_at": {_time_json(stored.created_at)}, '
        f'"updated_at": {_time_json(stored.updated_at)}, "fields": {fields_json}}}'
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def export_chunks(
    vault: VaultService,
    subject_id: str,
    now: datetime,
    purpose: str = "portability",
    page_size: int = EXPORT_PAGE,
) -> Iterator[tuple[bytes, int]]:
    """The export document as UTF-8 chunks, each with the number of records it holds.

    Records are read a page at a time in (category, record id) order and decrypted as
    they are written, so memory stays bounded by one page. Each record is on its own
    line; joined, the chunks are one JSON document (export.v1.schema.json).
    """
    vault.catalog.purpose(purpose)
    info = vault.subject_info(subject_id)
    readable = set(vault.readable(info, purpose, ""))
    categories = [c for c in vault.storage.record_categories(subject_id) if c in readable]
    head = {
        "format": EXPORT_FORMAT,
        "exported_at": _time(now),
        "subject": {
            "subject_id": info.subject_id,
            "state": info.state,
            "created_at": _time(info.created_at),
        },
    }
    pending = [_dumps(head)[:-1], ', "categories": {']
    for position, name in enumerate(categories):
        spec = vault.catalog.categories.get(name)
        field_names = spec.fields if spec is not None else frozenset[str]()
        meta = _dumps(_category(spec))[:-1]
        pending.append(f'{", " if position else ""}{_dumps(name)}: {meta}, "records": [')
        after, first = "", True
        while True:
            page = vault.storage.records_page(subject_id, name, after, page_size)
            if not page:
                break
            opened = vault.crypto.open_page(info, page, field_names)
            lines = [_record_line(stored, fields) for stored, fields in opened]
            pending.append(("\n" if first else ",\n") + ",\n".join(lines))
            first = False
            after = page[-1].record_id
            yield "".join(pending).encode("utf-8"), len(page)
            pending = []
            if len(page) < page_size:
                break
        pending.append("\n]}")
    pending.append("}}\n")
    yield "".join(pending).encode("utf-8"), 0


def export_json(
    vault: VaultService, subject_id: str, now: datetime, purpose: str = "portability"
) -> bytes:
    """The whole export document at once (small subjects; StreamExport for large ones)."""
    return b"".join(chunk for chunk, _ in export_chunks(vault, subject_id, now, purpose))


def export_document(
    vault: VaultService, subject_id: str, now: datetime, purpose: str = "portability"
) -> dict[str, Any]:
    """The export as a dict (parsed from the same bytes ExportSubject sends)."""
    document: dict[str, Any] = json.loads(export_json(vault, subject_id, now, purpose))
    return document


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
    caller_scope.note_purpose("access")  # the request names none: the audit entry says it
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
