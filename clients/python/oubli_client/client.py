"""Typed Python client for oubli.

    with OubliClient("127.0.0.1:50051", token="oubli_...") as client:
        subject = client.create_subject()
        record = client.create_record(subject.subject_id, "contact", {"email": "..."})
        client.get_record(subject.subject_id, record.record_id, purpose="service")
        client.export_to_file(subject.subject_id, "export.json")
        receipt = client.shred_subject(subject.subject_id)

Every call has a deadline. Idempotent calls (reads, export, shred) are retried on
UNAVAILABLE with exponential backoff and jitter (:mod:`oubli_client.retry`); calls that
create or change data are not, since a retry could apply them twice. gRPC errors become
the exceptions of :mod:`oubli_client.errors`.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from oubli_client.batches import BATCH_MAX, BatchIncomplete, chunks
from oubli_client.channel import bearer_metadata, open_channel
from oubli_client.errors import OubliClientError, error_for, from_rpc_error
from oubli_client.models import (
    KEY_KIND_NAMES,
    KEY_KINDS,
    STATE_NAMES,
    AuditCheckpoint,
    AuditCheckpointPage,
    AuditEntry,
    AuditVerification,
    KeyAge,
    NewRecord,
    Record,
    RetentionAction,
    RetentionSummary,
    RightsRequest,
    RotationPass,
    ShredReceipt,
    Subject,
    SupportGrant,
    grant_of,
    item_error_of,
    receipt_of,
    record_of,
    request_of,
    subject_of,
    time_of,
    timestamp_of,
)
from oubli_client.retry import RetryPolicy, call_with_retries
from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc

T = TypeVar("T")
R = TypeVar("R")

#: Deadline of a streaming call (export, retention run) unless the caller gives one.
STREAM_TIMEOUT = 3600.0


class OubliClient:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """``target``: "host:port". ``token``: the caller's bearer token.
        ``timeout``: each attempt's deadline, in seconds. ``max_attempts``,
        ``initial_backoff``, ``max_backoff``: retries of idempotent calls on UNAVAILABLE
        (:class:`~oubli_client.retry.RetryPolicy`). ``root_certificates``: the CA that
        signed the server's certificate, to speak TLS; with ``client_cert`` and
        ``client_key`` for mTLS. ``channel``: one of the caller's own instead (the client
        does not close it)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive: every call has a deadline")
        if channel is not None and (root_certificates or client_cert or client_key):
            raise ValueError("pass TLS settings or a channel of your own, not both")
        self.retry = RetryPolicy(max_attempts, initial_backoff, max_backoff)
        self._metadata = bearer_metadata(token)
        self._owns_channel = channel is None
        self._channel = channel or open_channel(
            target,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
        )
        self._subjects = pb_grpc.SubjectServiceStub(self._channel)
        self._records = pb_grpc.RecordServiceStub(self._channel)
        self._rights = pb_grpc.RightsServiceStub(self._channel)
        self._retention = pb_grpc.RetentionServiceStub(self._channel)
        self._audit = pb_grpc.AuditServiceStub(self._channel)
        self._lookup = pb_grpc.LookupServiceStub(self._channel)
        self._support = pb_grpc.SupportServiceStub(self._channel)
        self._key_admin = pb_grpc.KeyAdminServiceStub(self._channel)
        self.timeout = timeout
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto

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
        deadline = timeout or self.timeout
        return call_with_retries(
            lambda: rpc(request, timeout=deadline, metadata=self._metadata),
            self.retry,
            idempotent=idempotent,
            rng=self._rng,
            sleep=self._sleep,
        )

    def _in_chunks(self, items: Sequence[T], call: Callable[[Sequence[T]], list[R]]) -> list[R]:
        """``call`` on each chunk of at most BATCH_MAX items, results in input order."""
        done: list[R] = []
        for chunk in chunks(items, BATCH_MAX):
            try:
                done.extend(call(chunk))
            except OubliClientError as e:
                if not done:
                    raise
                raise BatchIncomplete(e, done, len(items) - len(done)) from e
        return done

    # --- subjects -------------------------------------------------------------------

    def create_subject(self) -> Subject:
        response = self._call(
            self._subjects.CreateSubject, pb.CreateSubjectRequest(), idempotent=False
        )
        return subject_of(response.subject)

    def get_subject(self, subject_id: str) -> Subject:
        response = self._call(
            self._subjects.GetSubject, pb.GetSubjectRequest(subject_id=subject_id), idempotent=True
        )
        return subject_of(response.subject)

    def shred_subject(self, subject_id: str) -> ShredReceipt:
        response = self._call(
            self._subjects.ShredSubject,
            pb.ShredSubjectRequest(subject_id=subject_id),
            idempotent=True,
        )
        return receipt_of(response.receipt)

    def export_subject(self, subject_id: str, purpose: str = "portability") -> dict[str, Any]:
        response = self._call(
            self._subjects.ExportSubject,
            pb.ExportSubjectRequest(subject_id=subject_id, purpose=purpose),
            idempotent=True,
        )
        document: dict[str, Any] = json.loads(response.json)
        return document

    def stream_export(
        self, subject_id: str, purpose: str = "portability", *, timeout: float = STREAM_TIMEOUT
    ) -> Iterator[bytes]:
        """The export document's bytes, chunk by chunk, as the server streams them
        (bounded memory on both sides). Not retried: a stream cut midway has already
        yielded its first chunks; :meth:`export_to_file` retries whole."""
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

    def export_to_file(
        self,
        subject_id: str,
        path: str | os.PathLike[str],
        purpose: str = "portability",
        *,
        timeout: float = STREAM_TIMEOUT,
    ) -> int:
        """Stream the subject's export document into ``path`` and return its size in
        bytes. The file appears whole or not at all: the stream goes to a temporary file
        beside it (mode 0600: it holds personal data), flushed to disk, then renamed over
        ``path``. A stream cut by UNAVAILABLE is started again from the beginning, as any
        idempotent call."""
        target = Path(path)

        def attempt() -> int:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                size = 0
                with os.fdopen(fd, "wb") as out:
                    for chunk in self.stream_export(subject_id, purpose, timeout=timeout):
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return size

        return call_with_retries(
            attempt, self.retry, idempotent=True, rng=self._rng, sleep=self._sleep
        )

    def shred_subjects(self, subject_ids: Sequence[str]) -> list[ShredReceipt | OubliClientError]:
        """Erase the subjects, BATCH_MAX per call; per subject, in order, its receipt or
        its error. The ids must be distinct (InvalidArgument, field ``subject_ids``, and
        nothing erased)."""
        if len(set(subject_ids)) != len(subject_ids):
            # What the server answers for one call, for the whole input.
            raise error_for(
                grpc.StatusCode.INVALID_ARGUMENT,
                "subject_ids must be distinct",
                field="subject_ids",
            )

        def shred(chunk: Sequence[str]) -> list[ShredReceipt | OubliClientError]:
            response = self._call(
                self._subjects.BatchShredSubjects,
                pb.BatchShredSubjectsRequest(subject_ids=list(chunk)),
                idempotent=True,
            )
            return [
                receipt_of(r.receipt) if r.HasField("receipt") else item_error_of(r.error)
                for r in response.results
            ]

        return self._in_chunks(subject_ids, shred)

    def close_account(self, subject_id: str) -> Subject:
        request = pb.CloseAccountRequest(subject_id=subject_id)
        return subject_of(
            self._call(self._subjects.CloseAccount, request, idempotent=False).subject
        )

    def reopen_account(self, subject_id: str) -> Subject:
        request = pb.ReopenAccountRequest(subject_id=subject_id)
        response = self._call(self._subjects.ReopenAccount, request, idempotent=False)
        return subject_of(response.subject)

    # --- records --------------------------------------------------------------------

    def create_record(
        self, subject_id: str, category: str, fields: Mapping[str, str], origin: str = "customer"
    ) -> Record:
        request = pb.CreateRecordRequest(
            subject_id=subject_id, category=category, fields=dict(fields), origin=origin
        )
        response = self._call(self._records.CreateRecord, request, idempotent=False)
        return record_of(response.record)

    def get_record(self, subject_id: str, record_id: str, purpose: str) -> Record:
        request = pb.GetRecordRequest(subject_id=subject_id, record_id=record_id, purpose=purpose)
        return record_of(self._call(self._records.GetRecord, request, idempotent=True).record)

    def batch_create_records(self, records: Sequence[NewRecord]) -> list[Record]:
        """Store the records (any subjects), BATCH_MAX per call; each call is atomic, all
        of its records or none. If a call after the first fails, :class:`BatchIncomplete`
        says which records were stored (``done``): the rest were not."""

        def create(chunk: Sequence[NewRecord]) -> list[Record]:
            request = pb.BatchCreateRecordsRequest(
                requests=[
                    pb.CreateRecordRequest(
                        subject_id=r.subject_id,
                        category=r.category,
                        fields=dict(r.fields),
                        origin=r.origin,
                    )
                    for r in chunk
                ]
            )
            response = self._call(self._records.BatchCreateRecords, request, idempotent=False)
            # The server does not send the fields back: they are the ones sent.
            return [
                replace(record_of(m), fields=dict(r.fields))
                for m, r in zip(response.records, chunk, strict=True)
            ]

        return self._in_chunks(records, create)

    def batch_get_records(
        self, reads: Sequence[tuple[str, str, str]]
    ) -> list[Record | OubliClientError]:
        """Read records given as (subject_id, record_id, purpose), BATCH_MAX per call;
        per read, in order, the record or the error the unary GetRecord would have
        raised."""

        def get(chunk: Sequence[tuple[str, str, str]]) -> list[Record | OubliClientError]:
            request = pb.BatchGetRecordsRequest(
                requests=[
                    pb.GetRecordRequest(subject_id=s, record_id=r, purpose=p) for s, r, p in chunk
                ]
            )
            response = self._call(self._records.BatchGetRecords, request, idempotent=True)
            return [
                record_of(r.record) if r.HasField("record") else item_error_of(r.error)
                for r in response.results
            ]

        return self._in_chunks(reads, get)

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
            records.extend(record_of(m) for m in response.records)
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
        return record_of(self._call(self._records.UpdateRecord, request, idempotent=False).record)

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
        return record_of(self._call(self._records.RecordEvent, request, idempotent=False).record)

    # --- rights ---------------------------------------------------------------------

    def access_report(self, subject_id: str) -> dict[str, Any]:
        request = pb.GetAccessReportRequest(subject_id=subject_id)
        response = self._call(self._rights.GetAccessReport, request, idempotent=True)
        document: dict[str, Any] = json.loads(response.json)
        return document

    def restrict(self, subject_id: str) -> Subject:
        request = pb.RestrictProcessingRequest(subject_id=subject_id)
        response = self._call(self._rights.RestrictProcessing, request, idempotent=True)
        return subject_of(response.subject)

    def lift_restriction(self, subject_id: str) -> Subject:
        request = pb.LiftRestrictionRequest(subject_id=subject_id)
        response = self._call(self._rights.LiftRestriction, request, idempotent=True)
        return subject_of(response.subject)

    def object_to(self, subject_id: str, purpose: str) -> Subject:
        request = pb.ObjectToPurposeRequest(subject_id=subject_id, purpose=purpose)
        response = self._call(self._rights.ObjectToPurpose, request, idempotent=True)
        return subject_of(response.subject)

    def withdraw_objection(self, subject_id: str, purpose: str) -> Subject:
        request = pb.WithdrawObjectionRequest(subject_id=subject_id, purpose=purpose)
        response = self._call(self._rights.WithdrawObjection, request, idempotent=True)
        return subject_of(response.subject)

    def grant_consent(self, subject_id: str, consent: str) -> Subject:
        request = pb.GrantConsentRequest(subject_id=subject_id, consent=consent)
        response = self._call(self._rights.GrantConsent, request, idempotent=True)
        return subject_of(response.subject)

    def withdraw_consent(self, subject_id: str, consent: str) -> tuple[Subject, int]:
        """The subject, and how many records stored under the consent were destroyed."""
        request = pb.WithdrawConsentRequest(subject_id=subject_id, consent=consent)
        response = self._call(self._rights.WithdrawConsent, request, idempotent=True)
        return subject_of(response.subject), response.records_destroyed

    def create_rights_request(self, subject_id: str, kind: str) -> RightsRequest:
        request = pb.CreateRightsRequestRequest(subject_id=subject_id, kind=kind)
        response = self._call(self._rights.CreateRightsRequest, request, idempotent=False)
        return request_of(response.request)

    def close_rights_request(self, request_id: str, status: str = "completed") -> RightsRequest:
        request = pb.CloseRightsRequestRequest(request_id=request_id, status=status)
        response = self._call(self._rights.CloseRightsRequest, request, idempotent=False)
        return request_of(response.request)

    def list_rights_requests(
        self, subject_id: str = "", *, open_only: bool = False, overdue_only: bool = False
    ) -> list[RightsRequest]:
        request = pb.ListRightsRequestsRequest(
            subject_id=subject_id, open_only=open_only, overdue_only=overdue_only
        )
        response = self._call(self._rights.ListRightsRequests, request, idempotent=True)
        return [request_of(m) for m in response.requests]

    # --- retention ------------------------------------------------------------------

    def run_retention(
        self, *, dry_run: bool = False, timeout: float = STREAM_TIMEOUT
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
        timeout: float = STREAM_TIMEOUT,
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
            rotated_before=timestamp_of(rotated_before) if rotated_before else None,
            rate=rate,
        )
        m = self._call(
            self._key_admin.RotateKeys,
            request,
            idempotent=rotated_before is not None,
            timeout=timeout,
        )
        return RotationPass(
            KEY_KIND_NAMES[m.kind],
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
                KEY_KIND_NAMES[a.kind],
                time_of(a, "oldest_time"),
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
                    time=timestamp_of(c.at),
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
        return grant_of(response.grant)

    def revoke_support_access(self, grant_id: str) -> SupportGrant:
        request = pb.RevokeSupportAccessRequest(grant_id=grant_id)
        response = self._call(self._support.RevokeSupportAccess, request, idempotent=False)
        return grant_of(response.grant)

    def support_overview(self, subject_id: str) -> dict[str, Any]:
        """Metadata only: per category record count, ciphertext bytes, dates; live grants."""
        request = pb.GetOverviewRequest(subject_id=subject_id)
        response = self._call(self._support.GetOverview, request, idempotent=True)
        return {
            "subject_id": response.subject_id,
            "state": STATE_NAMES.get(response.state, "unspecified"),
            "categories": {
                c.category: {
                    "record_count": c.record_count,
                    "ciphertext_bytes": c.ciphertext_bytes,
                    "oldest_created_at": c.oldest_create_time.ToDatetime(tzinfo=UTC),
                    "newest_updated_at": c.newest_update_time.ToDatetime(tzinfo=UTC),
                }
                for c in response.categories
            },
            "live_grants": [grant_of(g) for g in response.live_grants],
        }

    def read_under_grant(self, subject_id: str, grant_id: str) -> list[Record]:
        request = pb.ReadUnderGrantRequest(subject_id=subject_id, grant_id=grant_id)
        response = self._call(self._support.ReadUnderGrant, request, idempotent=True)
        return [record_of(m) for m in response.records]
