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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from clients.errors import OubliClientError, error_for, from_rpc_error, grpc_code
from clients.oubli_v1 import vault_pb2 as pb
from clients.oubli_v1 import vault_pb2_grpc as pb_grpc

T = TypeVar("T")

#: Exports of large subjects exceed gRPC's default 4 MiB receive limit.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

_STATES = {
    pb.SUBJECT_STATE_ACTIVE: "active",
    pb.SUBJECT_STATE_CLOSED: "closed",
    pb.SUBJECT_STATE_SHREDDING: "shredding",
    pb.SUBJECT_STATE_HELD: "held",
    pb.SUBJECT_STATE_SHREDDED: "shredded",
}


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return stamp


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    record_count: int
    restricted: bool = False
    objections: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    closed_at: datetime | None = None
    scheduled_erasure_at: datetime | None = None
    hold_until: datetime | None = None


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
    retain_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ShredReceipt:
    subject_id: str
    key_id: str
    shredded_at: datetime
    records_deleted: int
    kms_backend: str
    residual_risk: str
    residual_copies_expire_at: datetime
    records_retained: int = 0
    retained_until: datetime | None = None
    #: The seq of the erasure ledger's entry naming the destroyed key.
    ledger_position: int = 0
    #: Ed25519 signature (64 bytes) of the receipt document by the KMS signing key
    #: (docs/keys.md, "Checking a receipt").
    signature: bytes = b""
    signing_key_id: str = ""


@dataclass(frozen=True, slots=True)
class RightsRequest:
    request_id: str
    subject_id: str
    kind: str
    status: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class RetentionAction:
    kind: str
    target: str
    due_at: datetime
    records: int
    done: int
    total: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class RetentionSummary:
    dry_run: bool
    subjects_erased: int
    buckets_destroyed: int
    records_destroyed: int
    ran_at: datetime
    failures: int = 0


#: Kinds of keys ``rotate_keys`` handles (proto KeyKind).
KEY_KINDS = {
    "subjects": pb.KEY_KIND_SUBJECTS,
    "buckets": pb.KEY_KIND_BUCKETS,
    "deks": pb.KEY_KIND_DEKS,
    "index": pb.KEY_KIND_INDEX,
    "signing": pb.KEY_KIND_SIGNING,
}
_KEY_KIND_NAMES = {value: name for name, value in KEY_KINDS.items()}


@dataclass(frozen=True, slots=True)
class RotationPass:
    """One pass of a key rotation (KeyAdminService.RotateKeys)."""

    kind: str
    dry_run: bool
    due: int
    rotated: int
    trimmed: int
    failed: int
    remaining: int
    records: int
    kms_calls: int
    #: The cut-off the pass used: give it to the next pass.
    rotated_before: datetime


@dataclass(frozen=True, slots=True)
class KeyAge:
    kind: str
    oldest: datetime | None
    cryptoperiod: timedelta
    due: bool


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    caller: str
    action: str
    subject_id: str
    categories: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    outcome: str
    request_id: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    ok: bool
    #: Entries walked.
    checked: int
    first_broken_seq: int | None
    reason: str
    checkpoint_seq: int | None
    #: The whole chain was walked (asked for, or no checkpoint yet).
    full: bool = False
    #: One sentence for people, naming seqs only.
    detail: str = ""
    #: Exported checkpoints compared with the chain.
    exported_checked: int = 0


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """A signed chain head, to keep outside the server's database.

    ``signature`` is in the KMS backend's format; it signs
    ``b"oubli-audit-checkpoint/v1\\n" + seq + b"\\n" + hash`` (ASCII).
    """

    seq: int
    hash: str
    at: datetime
    signature: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True, slots=True)
class AuditCheckpointPage:
    checkpoints: list[AuditCheckpoint]
    #: Raw 32-byte Ed25519 public key of the signing key's latest version.
    public_key: bytes
    key_id: str
    #: Every version of the signing key still held: version -> raw public key.
    public_keys: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SupportGrant:
    grant_id: str
    subject_id: str
    ticket_record_id: str
    granted_by: str
    created_at: datetime
    expires_at: datetime
    status: str


def _grant(m: pb.SupportGrant) -> SupportGrant:
    return SupportGrant(
        m.grant_id,
        m.subject_id,
        m.ticket_record_id,
        m.granted_by,
        m.create_time.ToDatetime(tzinfo=UTC),
        m.expire_time.ToDatetime(tzinfo=UTC),
        m.status,
    )


def _request(m: pb.RightsRequest) -> RightsRequest:
    return RightsRequest(
        m.request_id,
        m.subject_id,
        m.kind,
        m.status,
        m.receive_time.ToDatetime(tzinfo=UTC),
        m.due_time.ToDatetime(tzinfo=UTC),
        _time(m, "complete_time"),
    )


def _subject(m: pb.Subject) -> Subject:
    return Subject(
        m.subject_id,
        _STATES.get(m.state, "unspecified"),
        m.create_time.ToDatetime(tzinfo=UTC),
        m.update_time.ToDatetime(tzinfo=UTC),
        m.record_count,
        m.restricted,
        tuple(m.objections),
        tuple(m.consents),
        _time(m, "close_time"),
        _time(m, "scheduled_erasure_time"),
        _time(m, "hold_until_time"),
    )


def _receipt(r: pb.ShredReceipt) -> ShredReceipt:
    return ShredReceipt(
        r.subject_id,
        r.key_id,
        r.shred_time.ToDatetime(tzinfo=UTC),
        r.records_deleted,
        r.kms_backend,
        r.residual_risk,
        r.residual_copies_expire_time.ToDatetime(tzinfo=UTC),
        r.records_retained,
        _time(r, "retained_until_time"),
        r.ledger_position,
        r.signature,
        r.signing_key_id,
    )


def _item_error(m: pb.ItemError) -> OubliClientError:
    return error_for(grpc_code(m.code), m.message, m.reason)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """One record of a batch put."""

    subject_id: str
    category: str
    fields: Mapping[str, str]
    origin: str = "customer"


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
        _time(m, "retain_until_time"),
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
        token: str | None = None,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        """``token``: bearer token (embedded default). ``root_certificates``: the CA
        that signed the server's certificate, to use TLS; with ``client_cert`` and
        ``client_key`` for mTLS, where the certificate names the caller."""
        options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
        if channel is None and root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
            channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._owns_channel = channel is None
        self._subjects = pb_grpc.SubjectServiceStub(self._channel)
        self._records = pb_grpc.RecordServiceStub(self._channel)
        self._rights = pb_grpc.RightsServiceStub(self._channel)
        self._retention = pb_grpc.RetentionServiceStub(self._channel)
        self._audit = pb_grpc.AuditServiceStub(self._channel)
        self._lookup = pb_grpc.LookupServiceStub(self._channel)
        self._support = pb_grpc.SupportServiceStub(self._channel)
        self._key_admin = pb_grpc.KeyAdminServiceStub(self._channel)
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

    def _call(
        self,
        rpc: Callable[..., T],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> T:
        attempts = self.max_attempts if idempotent else 1
        backoff = self._initial_backoff
        for attempt in range(1, attempts + 1):
            try:
                return rpc(request, timeout=timeout or self.timeout, metadata=self._metadata)
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
        return _receipt(response.receipt)

    def export_subject(self, subject_id: str, purpose: str = "portability") -> dict[str, Any]:
        response = self._call(
            self._subjects.ExportSubject,
            pb.ExportSubjectRequest(subject_id=subject_id, purpose=purpose),
            idempotent=True,
        )
        document: dict[str, Any] = json.loads(response.json)
        return document

    def stream_export(
        self, subject_id: str, purpose: str = "portability", *, timeout: float | None = 3600.0
    ) -> Iterator[bytes]:
        """The export document's bytes, chunk by chunk, as the server streams them
        (bounded memory on both sides: write them to a file as they come)."""
        stream = self._subjects.StreamExport(
            pb.StreamExportRequest(subject_id=subject_id, purpose=purpose),
            timeout=timeout,
            metadata=self._metadata,
        )
        try:
            for message in stream:
                yield message.chunk
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def shred_subjects(self, subject_ids: Sequence[str]) -> list[ShredReceipt | OubliClientError]:
        """Erase up to 1 000 subjects; per subject, in order, its receipt or its error."""
        response = self._call(
            self._subjects.BatchShredSubjects,
            pb.BatchShredSubjectsRequest(subject_ids=list(subject_ids)),
            idempotent=True,
        )
        return [
            _receipt(r.receipt) if r.HasField("receipt") else _item_error(r.error)
            for r in response.results
        ]

    def close_account(self, subject_id: str) -> Subject:
        request = pb.CloseAccountRequest(subject_id=subject_id)
        return _subject(self._call(self._subjects.CloseAccount, request, idempotent=False).subject)

    def reopen_account(self, subject_id: str) -> Subject:
        request = pb.ReopenAccountRequest(subject_id=subject_id)
        response = self._call(self._subjects.ReopenAccount, request, idempotent=False)
        return _subject(response.subject)

    # --- records --------------------------------------------------------------------

    def create_record(
        self, subject_id: str, category: str, fields: Mapping[str, str], origin: str = "customer"
    ) -> Record:
        request = pb.CreateRecordRequest(
            subject_id=subject_id, category=category, fields=dict(fields), origin=origin
        )
        response = self._call(self._records.CreateRecord, request, idempotent=False)
        return _record(response.record)

    def get_record(self, subject_id: str, record_id: str, purpose: str) -> Record:
        request = pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose=purpose)
        return _record(self._call(self._records.GetRecord, request, idempotent=True).record)

    def batch_create_records(self, records: Sequence[NewRecord]) -> list[Record]:
        """Store up to 1 000 records (any subjects) atomically: all of them or none."""
        request = pb.BatchCreateRecordsRequest(
            requests=[
                pb.CreateRecordRequest(
                    subject_id=r.subject_id,
                    category=r.category,
                    fields=dict(r.fields),
                    origin=r.origin,
                )
                for r in records
            ]
        )
        response = self._call(self._records.BatchCreateRecords, request, idempotent=False)
        # The server does not send the fields back: they are the ones sent.
        return [
            replace(_record(m), fields=dict(r.fields))
            for m, r in zip(response.records, records, strict=True)
        ]

    def batch_get_records(
        self, reads: Sequence[tuple[str, str, str]]
    ) -> list[Record | OubliClientError]:
        """Read up to 1 000 records given as (subject_id, record_id, purpose); per read,
        in order, the record or the error the unary GetRecord would have raised."""
        request = pb.BatchGetRecordsRequest(
            requests=[
                pb.GetRecordRequest(subject_id=s, record_id=r, purpose=p) for s, r, p in reads
            ]
        )
        response = self._call(self._records.BatchGetRecords, request, idempotent=True)
        return [
            _record(r.record) if r.HasField("record") else _item_error(r.error)
            for r in response.results
        ]

    def list_records(
        self, subject_id: str, category: str = "", page_size: int = 0, *, purpose: str
    ) -> list[Record]:
        """Every record of the subject readable for ``purpose`` (all pages)."""
        records: list[Record] = []
        token = ""
        while True:
            request = pb.ListRecordsRequest(
                subject_id=subject_id,
                category=category,
                page_size=page_size,
                page_token=token,
                purpose=purpose,
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
        *,
        erase_everywhere: bool = False,
    ) -> Record:
        """Rectify a record. ``erase_everywhere`` (always on for the catalog's
        ``erase_on_change`` categories) also erases the replaced value from every
        database copy, at the cost of a new subject key (see the proto)."""
        request = pb.UpdateRecordRequest(
            subject_id=subject_id,
            record_id=record_id,
            fields=dict(fields),
            expected_version=expected_version,
            origin=origin,
            erase_everywhere=erase_everywhere,
        )
        return _record(self._call(self._records.UpdateRecord, request, idempotent=False).record)

    def delete_record(
        self, subject_id: str, record_id: str, *, erase_everywhere: bool = False
    ) -> bool:
        """Delete a record; True when the value is erased from every database copy
        (``erase_everywhere``, or an ``erase_on_change`` category)."""
        request = pb.DeleteRecordRequest(
            subject_id=subject_id, record_id=record_id, erase_everywhere=erase_everywhere
        )
        response = self._call(self._records.DeleteRecord, request, idempotent=False)
        return response.erased_everywhere

    def record_event(self, subject_id: str, record_id: str, event: str) -> Record:
        """Start the record's retention clock (``"resolved"`` for a support ticket).

        Returns the record's metadata (new ``version``, ``retain_until``); ``fields`` is
        always empty: recording an event is not a read.
        """
        request = pb.RecordEventRequest(subject_id=subject_id, record_id=record_id, event=event)
        return _record(self._call(self._records.RecordEvent, request, idempotent=False).record)

    # --- rights ---------------------------------------------------------------------

    def access_report(self, subject_id: str) -> dict[str, Any]:
        request = pb.GetAccessReportRequest(subject_id=subject_id)
        response = self._call(self._rights.GetAccessReport, request, idempotent=True)
        document: dict[str, Any] = json.loads(response.json)
        return document

    def restrict(self, subject_id: str) -> Subject:
        request = pb.RestrictProcessingRequest(subject_id=subject_id)
        response = self._call(self._rights.RestrictProcessing, request, idempotent=True)
        return _subject(response.subject)

    def lift_restriction(self, subject_id: str) -> Subject:
        request = pb.LiftRestrictionRequest(subject_id=subject_id)
        response = self._call(self._rights.LiftRestriction, request, idempotent=True)
        return _subject(response.subject)

    def object_to(self, subject_id: str, purpose: str) -> Subject:
        request = pb.ObjectToPurposeRequest(subject_id=subject_id, purpose=purpose)
        response = self._call(self._rights.ObjectToPurpose, request, idempotent=True)
        return _subject(response.subject)

    def withdraw_objection(self, subject_id: str, purpose: str) -> Subject:
        request = pb.WithdrawObjectionRequest(subject_id=subject_id, purpose=purpose)
        response = self._call(self._rights.WithdrawObjection, request, idempotent=True)
        return _subject(response.subject)

    def grant_consent(self, subject_id: str, consent: str) -> Subject:
        request = pb.GrantConsentRequest(subject_id=subject_id, consent=consent)
        response = self._call(self._rights.GrantConsent, request, idempotent=True)
        return _subject(response.subject)

    def withdraw_consent(self, subject_id: str, consent: str) -> tuple[Subject, int]:
        """The subject, and how many records stored under the consent were destroyed."""
        request = pb.WithdrawConsentRequest(subject_id=subject_id, consent=consent)
        response = self._call(self._rights.WithdrawConsent, request, idempotent=True)
        return _subject(response.subject), response.records_destroyed

    def create_rights_request(self, subject_id: str, kind: str) -> RightsRequest:
        request = pb.CreateRightsRequestRequest(subject_id=subject_id, kind=kind)
        response = self._call(self._rights.CreateRightsRequest, request, idempotent=False)
        return _request(response.request)

    def close_rights_request(self, request_id: str, status: str = "completed") -> RightsRequest:
        request = pb.CloseRightsRequestRequest(request_id=request_id, status=status)
        response = self._call(self._rights.CloseRightsRequest, request, idempotent=False)
        return _request(response.request)

    def list_rights_requests(
        self, subject_id: str = "", *, open_only: bool = False, overdue_only: bool = False
    ) -> list[RightsRequest]:
        request = pb.ListRightsRequestsRequest(
            subject_id=subject_id, open_only=open_only, overdue_only=overdue_only
        )
        response = self._call(self._rights.ListRightsRequests, request, idempotent=True)
        return [_request(m) for m in response.requests]

    # --- retention ------------------------------------------------------------------

    def run_retention(
        self, *, dry_run: bool = False, timeout: float | None = 3600.0
    ) -> Iterator[RetentionAction | RetentionSummary]:
        """Each action as it is carried out (or planned, on a dry run), then the summary."""
        stream = self._retention.RunRetention(
            pb.RunRetentionRequest(dry_run=dry_run), timeout=timeout, metadata=self._metadata
        )
        try:
            for message in stream:
                if message.HasField("action"):
                    a = message.action
                    yield RetentionAction(
                        a.kind,
                        a.target,
                        a.due_time.ToDatetime(tzinfo=UTC),
                        a.records,
                        a.done,
                        a.total,
                        a.error,
                    )
                else:
                    m = message.summary
                    yield RetentionSummary(
                        m.dry_run,
                        m.subjects_erased,
                        m.buckets_destroyed,
                        m.records_destroyed,
                        m.run_time.ToDatetime(tzinfo=UTC),
                        m.failures,
                    )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # --- key administration ---------------------------------------------------------

    def rotate_keys(
        self,
        kind: str,
        *,
        dry_run: bool = False,
        force: bool = False,
        limit: int = 0,
        rotated_before: datetime | None = None,
        rate: float = 0.0,
        timeout: float | None = 3600.0,
    ) -> RotationPass:
        """One pass of the rotation of ``kind`` (subjects, buckets, deks, index,
        signing). Retried on UNAVAILABLE only with ``rotated_before`` set (a forced pass
        without it would take a new cut-off)."""
        if kind not in KEY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}")
        request = pb.RotateKeysRequest(
            kind=KEY_KINDS[kind],
            dry_run=dry_run,
            force=force,
            limit=limit,
            rotated_before=_timestamp(rotated_before) if rotated_before else None,
            rate=rate,
        )
        m = self._call(
            self._key_admin.RotateKeys,
            request,
            idempotent=rotated_before is not None,
            timeout=timeout,
        )
        return RotationPass(
            _KEY_KIND_NAMES[m.kind],
            m.dry_run,
            m.due,
            m.rotated,
            m.trimmed,
            m.failed,
            m.remaining,
            m.records,
            m.kms_calls,
            m.rotated_before.ToDatetime(tzinfo=UTC),
        )

    def key_ages(self) -> list[KeyAge]:
        """The oldest key of each kind, its cryptoperiod, whether a rotation is due."""
        m = self._call(self._key_admin.GetKeyAges, pb.GetKeyAgesRequest(), idempotent=True)
        return [
            KeyAge(
                _KEY_KIND_NAMES[a.kind],
                _time(a, "oldest_time"),
                a.cryptoperiod.ToTimedelta(),
                a.due,
            )
            for a in m.ages
        ]

    # --- lookup and audit -----------------------------------------------------------

    def find_subject(self, *, email: str = "", phone: str = "", purpose: str) -> list[str]:
        """Subject ids whose contact data holds this e-mail address or phone number."""
        request = pb.FindSubjectRequest(email=email, phone=phone, purpose=purpose)
        response = self._call(self._lookup.FindSubject, request, idempotent=True)
        return list(response.subject_ids)

    def query_audit(
        self,
        *,
        subject_id: str = "",
        caller: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 0,
    ) -> list[AuditEntry]:
        """Entries by subject, caller and time (``since`` inclusive, ``until`` exclusive)."""
        request = pb.QueryAuditRequest(subject_id=subject_id, caller=caller, limit=limit)
        if since is not None:
            request.since.FromDatetime(since)
        if until is not None:
            request.until.FromDatetime(until)
        response = self._call(self._audit.QueryAudit, request, idempotent=True)
        return [
            AuditEntry(
                e.seq,
                e.time.ToDatetime(tzinfo=UTC),
                e.caller,
                e.action,
                e.subject_id,
                tuple(e.categories),
                tuple(e.fields),
                e.purpose,
                e.outcome,
                e.request_id,
            )
            for e in response.entries
        ]

    def verify_audit(
        self, *, full: bool = False, exported: Sequence[AuditCheckpoint] = ()
    ) -> AuditVerification:
        """Check the audit chain from the newest checkpoint on (all of it with ``full``,
        which the server allows once per interval: ResourceExhausted with
        ``retry_after`` beyond), and against ``exported`` checkpoints (at most 10000)."""
        request = pb.VerifyAuditRequest(
            full=full,
            exported=[
                pb.AuditCheckpoint(
                    seq=c.seq,
                    hash=c.hash,
                    time=_timestamp(c.at),
                    signature=c.signature,
                    key_id=c.key_id,
                    key_version=c.key_version,
                )
                for c in exported
            ],
        )
        response = self._call(self._audit.VerifyAudit, request, idempotent=True)
        return AuditVerification(
            response.ok,
            response.checked,
            response.first_broken_seq or None,
            response.reason,
            response.checkpoint_seq or None,
            response.full,
            response.detail,
            response.exported_checked,
        )

    def list_audit_checkpoints(self, *, after_seq: int = 0, limit: int = 0) -> AuditCheckpointPage:
        """Signed checkpoints with a seq greater than ``after_seq``, oldest first (at most
        ``limit``, 0 meaning 1000), and the signing public key."""
        request = pb.ListAuditCheckpointsRequest(after_seq=after_seq, limit=limit)
        response = self._call(self._audit.ListAuditCheckpoints, request, idempotent=True)
        return AuditCheckpointPage(
            [
                AuditCheckpoint(
                    c.seq,
                    c.hash,
                    c.time.ToDatetime(tzinfo=UTC),
                    c.signature,
                    c.key_id,
                    c.key_version,
                )
                for c in response.checkpoints
            ],
            response.public_key,
            response.key_id,
            dict(response.public_keys),
        )

    # --- support access -------------------------------------------------------------

    def grant_support_access(
        self, subject_id: str, ticket_record_id: str, hours: int
    ) -> SupportGrant:
        request = pb.GrantSupportAccessRequest(
            subject_id=subject_id, ticket_record_id=ticket_record_id, hours=hours
        )
        response = self._call(self._support.GrantSupportAccess, request, idempotent=False)
        return _grant(response.grant)

    def revoke_support_access(self, grant_id: str) -> SupportGrant:
        request = pb.RevokeSupportAccessRequest(grant_id=grant_id)
        response = self._call(self._support.RevokeSupportAccess, request, idempotent=False)
        return _grant(response.grant)

    def support_overview(self, subject_id: str) -> dict[str, Any]:
        """Metadata only: per category record count, ciphertext bytes, dates; live grants."""
        request = pb.GetOverviewRequest(subject_id=subject_id)
        response = self._call(self._support.GetOverview, request, idempotent=True)
        return {
            "subject_id": response.subject_id,
            "state": _STATES.get(response.state, "unspecified"),
            "categories": {
                c.category: {
                    "record_count": c.record_count,
                    "ciphertext_bytes": c.ciphertext_bytes,
                    "oldest_created_at": c.oldest_create_time.ToDatetime(tzinfo=UTC),
                    "newest_updated_at": c.newest_update_time.ToDatetime(tzinfo=UTC),
                }
                for c in response.categories
            },
            "live_grants": [_grant(g) for g in response.live_grants],
        }

    def read_under_grant(self, subject_id: str, grant_id: str) -> list[Record]:
        request = pb.ReadUnderGrantRequest(subject_id=subject_id, grant_id=grant_id)
        response = self._call(self._support.ReadUnderGrant, request, idempotent=True)
        return [_record(m) for m in response.records]
