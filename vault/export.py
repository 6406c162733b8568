"""Portability export: a subject's data decrypted into JSON.

The shape is published as a JSON Schema (``vault/schemas/export.v1.schema.json``) and
documented in docs/export.md. Records are grouped by category and sorted by record id,
so two exports of unchanged data are byte-identical apart from ``exported_at``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from vault.service import RecordView, VaultService

FORMAT = "oubli.export.v1"


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def export_document(vault: VaultService, subject_id: str, now: datetime) -> dict[str, Any]:
    info, records = vault.all_records(subject_id)
    categories: dict[str, list[RecordView]] = {}
    for record in records:
        categories.setdefault(record.category, []).append(record)
    return {
        "format": FORMAT,
        "exported_at": _time(now),
        "subject": {
            "subject_id": info.subject_id,
            "state": info.state,
            "created_at": _time(info.created_at),
        },
        "categories": {
            name: {
                "description": vault.catalog.categories[name].description
                if name in vault.catalog.categories
                else "",
                "records": [
                    {
                        "record_id": r.record_id,
                        "version": r.version,
                        "origin": r.origin,
                        "created_at": _time(r.created_at),
                        "updated_at": _time(r.updated_at),
                        "fields": dict(sorted(r.fields.items())),
                    }
                    for r in categories[name]
                ],
            }
            for name in sorted(categories)
        },
    }


def export_json(vault: VaultService, subject_id: str, now: datetime) -> bytes:
    document = export_document(vault, subject_id, now)
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
