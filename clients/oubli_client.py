"""Typed Python client for oubli.

    with OubliClient("127.0.0.1:50051") as client:
        subject = client.create_subject()
        record = client.create_record(subject.subject_id, "contact", {"email": "..."})
        document = client.export_subject(subject.subject_id)
        receipt = client.shred_subject(subject.subject_id)

Every call has a deadline. Idempotent calls (reads, export, shred) are retried with
exponential backoff and jitter on UNAVAILABLE; calls that create or change data are
not, since a retry could apply them twice. gRPC errors become the exceptions of
:mod:`clients.errors`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc

from clients.errors import from_rpc_error
from clients.oubli_v1 import vault_pb2 as pb
from clients.oubli_v1 import vault_pb2_grpc as pb_grpc

T = TypeVar("T")

#: Exports of large subjects exceed gRPC's default 4 MiB receive limit.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

_STATES = {
    pb.SUBJECT_STATE_ACTIVE: "active",
    pb.SUBJECT_STATE_SHREDDING: "shredding",
    pb.SUBJECT_STATE_SHREDDED: "shredded",
}


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    record_count: int


@dataclass(frozen=True, slots=True)
class Record:
    subject_id: str
    record_id: str
    category: str
    fields: dict[str, str]
    version: int
    origin: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ShredReceipt:
    subject_id: str
    key_id: str
    shredded_at: datetime
    records_deleted: int
    kms_backend: str
    residual_risk: str
    residual_copies_expire_at: datetime


def _subject(m: pb.Subject) -> Subject:
    return Subject(
        m.subject_id,
        _STATES.get(m.state, "unspecified"),
        m.create_time.ToDatetime(tzinfo=UTC),
        m.update_time.ToDatetime(tzinfo=UTC),
        m.record_count,
    )


def _record(m: pb.Record) -> Record:
    return Record(
        m.subject_id,
        m.record_id,
        m.category,
        dict(m.fields),
        m.version,
        m.origin,
        m.create_time.ToDatetime(tzinfo=UTC),
        m.update_time.ToDatetime(tzinfo=UTC),
    )


class OubliClient:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 4,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
        )
        self._owns_channel = channel is None
        self._subjects = pb_grpc.SubjectServiceStub(self._channel)
        self._records = pb_grpc.RecordServiceStub(self._channel)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._sleep = sleep

    def __enter__(self) -> OubliClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _call(self, rpc: Callable[..., T], request: Any, *, idempotent: bool) -> T:
        attempts = self.max_attempts if idempotent else 1
        backoff = self._initial_backoff
        for attempt in range(1, attempts + 1):
            try:
                return rpc(request, timeout=self.timeout)
            except grpc.RpcError as e:
                retry = attempt < attempts and e.code() == grpc.StatusCode.UNAVAILABLE
                if not retry:
                    raise from_rpc_error(e) from None
                self._sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not crypto
                backoff = min(backoff * 2, self._max_backoff)
        raise AssertionError("unreachable")

    # --- subjects -------------------------------------------------------------------

    def create_subject(self) -> Subject:
        response = self._call(
            self._subjects.CreateSubject, pb.CreateSubjectRequest(), idempotent=False
        )
        return _subject(response.subject)

    def get_subject(self, subject_id: str) -> Subject:
        response = self._call(
            self._subjects.GetSubject, pb.GetSubjectRequest(subject_id=subject_id), idempotent=True
        )
        return _subject(response.subject)

    def shred_subject(self, subject_id: str) -> ShredReceipt:
        response = self._call(
            self._subjects.ShredSubject,
            pb.ShredSubjectRequest(subject_id=subject_id),
            idempotent=True,
        )
        r = response.receipt
        return ShredReceipt(
            r.subject_id,
            r.key_id,
            r.shred_time.ToDatetime(tzinfo=UTC),
            r.records_deleted,
            r.kms_backend,
            r.residual_risk,
            r.residual_copies_expire_time.ToDatetime(tzinfo=UTC),
        )

    def export_subject(self, subject_id: str) -> dict[str, Any]:
        response = self._call(
            self._subjects.ExportSubject,
            pb.ExportSubjectRequest(subject_id=subject_id),
            idempotent=True,
        )
        document: dict[str, Any] = json.loads(response.json)
        return document

    # --- records --------------------------------------------------------------------

    def create_record(
        self, subject_id: str, category: str, fields: Mapping[str, str], origin: str = "customer"
    ) -> Record:
        request = pb.CreateRecordRequest(
            subject_id=subject_id, category=category, fields=dict(fields), origin=origin
        )
        response = self._call(self._records.CreateRecord, request, idempotent=False)
        return _record(response.record)

    def get_record(self, subject_id: str, record_id: str) -> Record:
        request = pb.GetRecordRequest(subject_id=subject_id, record_id=record_id)
        return _record(self._call(self._records.GetRecord, request, idempotent=True).record)

    def list_records(self, subject_id: str, category: str = "", page_size: int = 0) -> list[Record]:
        """Every record of the subject (all pages)."""
        records: list[Record] = []
        token = ""
        while True:
            request = pb.ListRecordsRequest(
                subject_id=subject_id, category=category, page_size=page_size, page_token=token
            )
            response = self._call(self._records.ListRecords, request, idempotent=True)
            records.extend(_record(m) for m in response.records)
            token = response.next_page_token
            if not token:
                return records

    def update_record(
        self,
        subject_id: str,
        record_id: str,
        fields: Mapping[str, str],
        expected_version: int,
        origin: str = "",
    ) -> Record:
        request = pb.UpdateRecordRequest(
            subject_id=subject_id,
            record_id=record_id,
            fields=dict(fields),
            expected_version=expected_version,
            origin=origin,
        )
        return _record(self._call(self._records.UpdateRecord, request, idempotent=False).record)

    def delete_record(self, subject_id: str, record_id: str) -> None:
        request = pb.DeleteRecordRequest(subject_id=subject_id, record_id=record_id)
        self._call(self._records.DeleteRecord, request, idempotent=False)
