"""gRPC servicers: proto <-> domain conversion and nothing else.

Errors are raised as domain exceptions and turned into statuses by
vault.interceptors.ServiceInterceptor.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from clients.oubli_v1 import vault_pb2 as pb
from clients.oubli_v1 import vault_pb2_grpc as pb_grpc
from vault.access import current_caller
from vault.audit import AuditLog, Checkpoint
from vault.bulk import BulkOps, NewRecord, RecordRead
from vault.callers import CALLER_NAME
from vault.clock import Clock
from vault.errors import InvalidArgument, OubliError
from vault.export import access_report, export_chunks, export_json
from vault.finder import SubjectFinder
from vault.grpc_errors import status_code_for
from vault.ids import check_id
from vault.retention import RetentionJob, RetentionSummary
from vault.rights import RightsService
from vault.rpcs import DISCLOSING
from vault.service import RecordView, ShredReceipt, SubjectView, VaultService
from vault.storage import RightsRequest
from vault.support import Grant, SupportAccess

_STATE = {
    "active": pb.SUBJECT_STATE_ACTIVE,
    "closed": pb.SUBJECT_STATE_CLOSED,
    "shredding": pb.SUBJECT_STATE_SHREDDING,
    "held": pb.SUBJECT_STATE_HELD,
    "shredded": pb.SUBJECT_STATE_SHREDDED,
}


@functools.lru_cache(maxsize=1024)
def _ts(value: datetime) -> Timestamp:
    """The Timestamp of ``value``; cached, since a batch's records share their times
    (messages copy it when they are built, so the cached one is never changed)."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _maybe_ts(value: datetime | None) -> Timestamp | None:
    return None if value is None else _ts(value)


def _request_time(request: Message, field: str) -> datetime | None:
    """A request's Timestamp field as an aware datetime; None when unset.

    Raises:
        InvalidArgument: outside what a Timestamp may hold (0001-01-01 to 9999-12-31,
            nanos 0 to 999999999), which protobuf refuses with a ValueError.
    """
    if not request.HasField(field):
        return None
    try:
        value: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            field,
            f"{field} is not a valid Timestamp: seconds from 0001-01-01 to 9999-12-31 UTC, "
            "nanos from 0 to 999999999",
        ) from None
    return value


def subject_message(view: SubjectView) -> pb.Subject:
    return pb.Subject(
        subject_id=view.subject_id,
        state=_STATE[view.state],
        create_time=_ts(view.created_at),
        update_time=_ts(view.updated_at),
        record_count=view.record_count,
        restricted=view.restricted,
        objections=view.objections,
        consents=view.consents,
        close_time=_maybe_ts(view.closed_at),
        scheduled_erasure_time=_maybe_ts(view.scheduled_shred_at),
        hold_until_time=_maybe_ts(view.hold_until),
    )


def record_message(view: RecordView, *, with_fields: bool = True) -> pb.Record:
    return pb.Record(
        subject_id=view.subject_id,
        record_id=view.record_id,
        category=view.category,
        fields=view.fields if with_fields else None,
        version=view.version,
        origin=view.origin,
        create_time=_ts(view.created_at),
        update_time=_ts(view.updated_at),
        retain_until_time=_maybe_ts(view.retain_until),
    )


def receipt_message(receipt: ShredReceipt) -> pb.ShredReceipt:
    return pb.ShredReceipt(
        subject_id=receipt.subject_id,
        key_id=receipt.key_id,
        shred_time=_ts(receipt.shredded_at),
        records_deleted=receipt.records_deleted,
        kms_backend=receipt.kms_backend,
        residual_risk=receipt.residual_risk,
        residual_copies_expire_time=_ts(receipt.residual_copies_expire_at),
        records_retained=receipt.records_retained,
        retained_until_time=_maybe_ts(receipt.retained_until),
    )


def request_message(request: RightsRequest) -> pb.RightsRequest:
    return pb.RightsRequest(
        request_id=request.request_id,
        subject_id=request.subject_id,
        kind=request.kind,
        status=request.status,
        receive_time=_ts(request.received_at),
        due_time=_ts(request.due_at),
        complete_time=_maybe_ts(request.completed_at),
    )


def request_json(request: RightsRequest) -> dict[str, str | None]:
    return {
        "request_id": request.request_id,
        "kind": request.kind,
        "status": request.status,
        "received_at": request.received_at.isoformat().replace("+00:00", "Z"),
        "due_at": request.due_at.isoformat().replace("+00:00", "Z"),
        "completed_at": None
        if request.completed_at is None
        else request.completed_at.isoformat().replace("+00:00", "Z"),
    }


def item_error(error: OubliError) -> pb.ItemError:
    """A batch item's failure, as the unary call's status would have said it."""
    return pb.ItemError(
        code=status_code_for(error).value[0], reason=error.reason, message=error.message
    )


class SubjectServicer(pb_grpc.SubjectServiceServicer):
    def __init__(self, vault: VaultService, clock: Clock) -> None:
        self._vault = vault
        self._bulk = BulkOps(vault)
        self._clock = clock

    def CreateSubject(
        self, request: pb.CreateSubjectRequest, context: grpc.ServicerContext
    ) -> pb.CreateSubjectResponse:
        return pb.CreateSubjectResponse(subject=subject_message(self._vault.create_subject()))

    def GetSubject(
        self, request: pb.GetSubjectRequest, context: grpc.ServicerContext
    ) -> pb.GetSubjectResponse:
        view = self._vault.get_subject(request.subject_id)
        return pb.GetSubjectResponse(subject=subject_message(view))

    def ShredSubject(
        self, request: pb.ShredSubjectRequest, context: grpc.ServicerContext
    ) -> pb.ShredSubjectResponse:
        receipt = self._vault.shred_subject(request.subject_id)
        return pb.ShredSubjectResponse(receipt=receipt_message(receipt))

    def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: grpc.ServicerContext
    ) -> pb.ExportSubjectResponse:
        document = export_json(self._vault, request.subject_id, self._clock(), request.purpose)
        return pb.ExportSubjectResponse(json=document, content_type="application/json")

    def StreamExport(
        self, request: pb.StreamExportRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamExportResponse]:
        chunks = export_chunks(self._vault, request.subject_id, self._clock(), request.purpose)
        for chunk, count in chunks:
            yield pb.StreamExportResponse(chunk=chunk, record_count=count)

    def BatchShredSubjects(
        self, request: pb.BatchShredSubjectsRequest, context: grpc.ServicerContext
    ) -> pb.BatchShredSubjectsResponse:
        results = self._bulk.shred_subjects(list(request.subject_ids))
        return pb.BatchShredSubjectsResponse(
            results=[
                pb.ShredResult(subject_id=subject_id, error=item_error(result))
                if isinstance(result, OubliError)
                else pb.ShredResult(subject_id=subject_id, receipt=receipt_message(result))
                for subject_id, result in zip(request.subject_ids, results, strict=True)
            ]
        )

    def CloseAccount(
        self, request: pb.CloseAccountRequest, context: grpc.ServicerContext
    ) -> pb.CloseAccountResponse:
        view = self._vault.close_account(request.subject_id)
        return pb.CloseAccountResponse(subject=subject_message(view))

    def ReopenAccount(
        self, request: pb.ReopenAccountRequest, context: grpc.ServicerContext
    ) -> pb.ReopenAccountResponse:
        view = self._vault.reopen_account(request.subject_id)
        return pb.ReopenAccountResponse(subject=subject_message(view))


class RecordServicer(pb_grpc.RecordServiceServicer):
    def __init__(self, vault: VaultService) -> None:
        self._vault = vault
        self._bulk = BulkOps(vault)

    def BatchCreateRecords(
        self, request: pb.BatchCreateRecordsRequest, context: grpc.ServicerContext
    ) -> pb.BatchCreateRecordsResponse:
        views = self._bulk.create_records(
            [
                NewRecord(r.subject_id, r.category, dict(r.fields), r.origin)
                for r in request.requests
            ]
        )
        return pb.BatchCreateRecordsResponse(
            records=[record_message(v, with_fields=False) for v in views]
        )

    def BatchGetRecords(
        self, request: pb.BatchGetRecordsRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetRecordsResponse:
        results = self._bulk.get_records(
            [RecordRead(r.subject_id, r.record_id, r.purpose) for r in request.requests]
        )
        return pb.BatchGetRecordsResponse(
            results=[
                pb.GetRecordResult(error=item_error(r))
                if isinstance(r, OubliError)
                else pb.GetRecordResult(record=record_message(r))
                for r in results
            ]
        )

    def CreateRecord(
        self, request: pb.CreateRecordRequest, context: grpc.ServicerContext
    ) -> pb.CreateRecordResponse:
        view = self._vault.create_record(
            request.subject_id, request.category, dict(request.fields), request.origin
        )
        return pb.CreateRecordResponse(record=record_message(view))

    def GetRecord(
        self, request: pb.GetRecordRequest, context: grpc.ServicerContext
    ) -> pb.GetRecordResponse:
        view = self._vault.get_record(request.subject_id, request.record_id, request.purpose)
        return pb.GetRecordResponse(record=record_message(view))

    def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.ServicerContext
    ) -> pb.ListRecordsResponse:
        page = self._vault.list_records(
            request.subject_id,
            request.category,
            request.page_size,
            request.page_token,
            request.purpose,
        )
        return pb.ListRecordsResponse(
            records=[record_message(r) for r in page.records],
            next_page_token=page.next_page_token,
        )

    def UpdateRecord(
        self, request: pb.UpdateRecordRequest, context: grpc.ServicerContext
    ) -> pb.UpdateRecordResponse:
        view = self._vault.update_record(
            request.subject_id,
            request.record_id,
            dict(request.fields),
            request.expected_version,
            request.origin,
        )
        return pb.UpdateRecordResponse(record=record_message(view))

    def DeleteRecord(
        self, request: pb.DeleteRecordRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRecordResponse:
        self._vault.delete_record(request.subject_id, request.record_id)
        return pb.DeleteRecordResponse()

    def RecordEvent(
        self, request: pb.RecordEventRequest, context: grpc.ServicerContext
    ) -> pb.RecordEventResponse:
        view = self._vault.record_event(request.subject_id, request.record_id, request.event)
        return pb.RecordEventResponse(record=record_message(view, with_fields=False))


class RightsServicer(pb_grpc.RightsServiceServicer):
    def __init__(self, rights: RightsService, audit: AuditLog | None = None) -> None:
        self._rights = rights
        self._vault = rights.vault
        self._audit = audit

    def _readers(self, subject_id: str) -> dict[str, set[str]]:
        """Category -> callers that read it: the callers of RPCs that disclose stored
        values (vault.rpcs), from the subject's audit entries."""
        readers: dict[str, set[str]] = {}
        if self._audit is None:
            return readers
        after = 0
        while True:
            page = self._audit.query(subject_id=subject_id, limit=1000, after_seq=after)
            for entry in page:
                if entry.event.outcome == "OK" and entry.event.action in DISCLOSING:
                    for category in entry.event.categories:
                        readers.setdefault(category, set()).add(entry.event.caller)
            if len(page) < 1000:
                return readers
            after = page[-1].seq

    def GetAccessReport(
        self, request: pb.GetAccessReportRequest, context: grpc.ServicerContext
    ) -> pb.GetAccessReportResponse:
        requests = [request_json(r) for r in self._rights.list_requests(request.subject_id)]
        readers = self._readers(check_id("subject_id", request.subject_id))
        document = access_report(
            self._vault, request.subject_id, self._vault.clock(), requests, readers
        )
        return pb.GetAccessReportResponse(
            json=json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8"),
            content_type="application/json",
        )

    def RestrictProcessing(
        self, request: pb.RestrictProcessingRequest, context: grpc.ServicerContext
    ) -> pb.RestrictProcessingResponse:
        view = self._rights.restrict(request.subject_id)
        return pb.RestrictProcessingResponse(subject=subject_message(view))

    def LiftRestriction(
        self, request: pb.LiftRestrictionRequest, context: grpc.ServicerContext
    ) -> pb.LiftRestrictionResponse:
        view = self._rights.lift_restriction(request.subject_id)
        return pb.LiftRestrictionResponse(subject=subject_message(view))

    def ObjectToPurpose(
        self, request: pb.ObjectToPurposeRequest, context: grpc.ServicerContext
    ) -> pb.ObjectToPurposeResponse:
        view = self._rights.object_to(request.subject_id, request.purpose)
        return pb.ObjectToPurposeResponse(subject=subject_message(view))

    def WithdrawObjection(
        self, request: pb.WithdrawObjectionRequest, context: grpc.ServicerContext
    ) -> pb.WithdrawObjectionResponse:
        view = self._rights.withdraw_objection(request.subject_id, request.purpose)
        return pb.WithdrawObjectionResponse(subject=subject_message(view))

    def GrantConsent(
        self, request: pb.GrantConsentRequest, context: grpc.ServicerContext
    ) -> pb.GrantConsentResponse:
        view = self._rights.grant_consent(request.subject_id, request.consent)
        return pb.GrantConsentResponse(subject=subject_message(view))

    def WithdrawConsent(
        self, request: pb.WithdrawConsentRequest, context: grpc.ServicerContext
    ) -> pb.WithdrawConsentResponse:
        result = self._rights.withdraw_consent(request.subject_id, request.consent)
        return pb.WithdrawConsentResponse(
            subject=subject_message(result.subject), records_destroyed=result.records_destroyed
        )

    def CreateRightsRequest(
        self, request: pb.CreateRightsRequestRequest, context: grpc.ServicerContext
    ) -> pb.CreateRightsRequestResponse:
        made = self._rights.open_request(request.subject_id, request.kind)
        return pb.CreateRightsRequestResponse(request=request_message(made))

    def CloseRightsRequest(
        self, request: pb.CloseRightsRequestRequest, context: grpc.ServicerContext
    ) -> pb.CloseRightsRequestResponse:
        closed = self._rights.close_request(request.request_id, request.status or "completed")
        return pb.CloseRightsRequestResponse(request=request_message(closed))

    def ListRightsRequests(
        self, request: pb.ListRightsRequestsRequest, context: grpc.ServicerContext
    ) -> pb.ListRightsRequestsResponse:
        found = self._rights.list_requests(
            request.subject_id, open_only=request.open_only, overdue_only=request.overdue_only
        )
        return pb.ListRightsRequestsResponse(requests=[request_message(r) for r in found])


class RetentionServicer(pb_grpc.RetentionServiceServicer):
    def __init__(self, job: RetentionJob) -> None:
        self._job = job

    def RunRetention(
        self, request: pb.RunRetentionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunRetentionResponse]:
        summary = RetentionSummary(self._job.vault.clock(), request.dry_run)
        for action, done, total in self._job.steps(dry_run=request.dry_run):
            summary.actions.append(action)
            yield pb.RunRetentionResponse(
                action=pb.RetentionAction(
                    kind=action.kind,
                    target=action.target,
                    due_time=_ts(action.due_at),
                    records=action.records,
                    done=done,
                    total=total,
                    error=action.error,
                )
            )
        yield pb.RunRetentionResponse(
            summary=pb.RetentionSummary(
                dry_run=summary.dry_run,
                subjects_erased=summary.subjects_erased,
                buckets_destroyed=summary.buckets_destroyed,
                records_destroyed=summary.records_destroyed,
                run_time=_ts(summary.ran_at),
                failures=summary.failures,
            )
        )


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def QueryAudit(
        self, request: pb.QueryAuditRequest, context: grpc.ServicerContext
    ) -> pb.QueryAuditResponse:
        if request.subject_id:
            check_id("subject_id", request.subject_id)
        if request.caller and not CALLER_NAME.fullmatch(request.caller):
            raise InvalidArgument("caller", "caller names match [a-z][a-z0-9-]{0,63}")
        if not 0 <= request.limit <= 1000:
            raise InvalidArgument("limit", "limit must be between 0 and 1000")
        entries = self._audit.query(
            subject_id=request.subject_id or None,
            caller=request.caller or None,
            since=_request_time(request, "since"),
            until=_request_time(request, "until"),
            limit=request.limit or 1000,
        )
        return pb.QueryAuditResponse(
            entries=[
                pb.AuditEntry(
                    seq=e.seq,
                    time=_ts(e.at),
                    caller=e.event.caller,
                    action=e.event.action,
                    subject_id=e.event.subject_id or "",
                    categories=e.event.categories,
                    fields=e.event.fields,
                    purpose=e.event.purpose,
                    outcome=e.event.outcome,
                    request_id=e.event.request_id,
                    hash=e.hash,
                )
                for e in entries
            ]
        )

    def VerifyAudit(
        self, request: pb.VerifyAuditRequest, context: grpc.ServicerContext
    ) -> pb.VerifyAuditResponse:
        result = self._audit.verify(
            full=request.full, exported=[_exported_checkpoint(c) for c in request.exported]
        )
        return pb.VerifyAuditResponse(
            ok=result.ok,
            checked=result.checked,
            first_broken_seq=result.first_broken_seq or 0,
            reason=result.reason,
            checkpoint_seq=result.checkpoint_seq or 0,
            full=result.full,
            detail=result.detail,
            exported_checked=result.exported_checked,
        )

    def ListAuditCheckpoints(
        self, request: pb.ListAuditCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditCheckpointsResponse:
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "after_seq must be >= 0")
        if not 0 <= request.limit <= 1000:
            raise InvalidArgument("limit", "limit must be between 0 and 1000")
        checkpoints = self._audit.checkpoints_after(request.after_seq, request.limit or 1000)
        return pb.ListAuditCheckpointsResponse(
            checkpoints=[
                pb.AuditCheckpoint(
                    seq=c.seq,
                    hash=c.hash,
                    time=_ts(c.at),
                    signature=c.signature,
                    key_id=c.key_id,
                    key_version=c.key_version,
                )
                for c in checkpoints
            ],
            public_key=self._audit.public_key(),
            key_id=self._audit.signing_key_id,
        )


def _exported_checkpoint(message: pb.AuditCheckpoint) -> Checkpoint:
    try:
        at = message.time.ToDatetime(tzinfo=UTC)
    except ValueError:  # its message quotes the value; this one does not
        raise InvalidArgument("exported", "an exported checkpoint's time is out of range") from None
    return Checkpoint(message.seq, message.hash, message.signature, message.key_id, at)


class LookupServicer(pb_grpc.LookupServiceServicer):
    def __init__(self, finder: SubjectFinder) -> None:
        self._finder = finder

    def FindSubject(
        self, request: pb.FindSubjectRequest, context: grpc.ServicerContext
    ) -> pb.FindSubjectResponse:
        if bool(request.email) == bool(request.phone):
            raise InvalidArgument("email", "give exactly one of email and phone")
        kind, value = ("email", request.email) if request.email else ("phone", request.phone)
        found = self._finder.find(kind, value, request.purpose)
        return pb.FindSubjectResponse(subject_ids=found)


class SupportServicer(pb_grpc.SupportServiceServicer):
    def __init__(self, support: SupportAccess) -> None:
        self._support = support

    def _grant(self, grant: Grant) -> pb.SupportGrant:
        return pb.SupportGrant(
            grant_id=grant.grant_id,
            subject_id=grant.subject_id,
            ticket_record_id=grant.ticket_record_id,
            granted_by=grant.granted_by,
            create_time=_ts(grant.created_at),
            expire_time=_ts(grant.expires_at),
            status=grant.status(self._support.vault.clock()),
        )

    def GrantSupportAccess(
        self, request: pb.GrantSupportAccessRequest, context: grpc.ServicerContext
    ) -> pb.GrantSupportAccessResponse:
        grant = self._support.grant(
            request.subject_id, request.ticket_record_id, request.hours, current_caller()
        )
        return pb.GrantSupportAccessResponse(grant=self._grant(grant))

    def RevokeSupportAccess(
        self, request: pb.RevokeSupportAccessRequest, context: grpc.ServicerContext
    ) -> pb.RevokeSupportAccessResponse:
        return pb.RevokeSupportAccessResponse(
            grant=self._grant(self._support.revoke(request.grant_id))
        )

    def GetOverview(
        self, request: pb.GetOverviewRequest, context: grpc.ServicerContext
    ) -> pb.GetOverviewResponse:
        overview = self._support.overview(request.subject_id)
        return pb.GetOverviewResponse(
            subject_id=overview.subject_id,
            state=_STATE[overview.state],
            categories=[
                pb.CategoryOverview(
                    category=c.category,
                    record_count=c.record_count,
                    ciphertext_bytes=c.ciphertext_bytes,
                    oldest_create_time=_ts(c.oldest_created_at),
                    newest_update_time=_ts(c.newest_updated_at),
                )
                for c in overview.categories
            ],
            live_grants=[
                self._grant(self._support.get_grant(g.grant_id)) for g in overview.live_grants
            ],
        )

    def ReadUnderGrant(
        self, request: pb.ReadUnderGrantRequest, context: grpc.ServicerContext
    ) -> pb.ReadUnderGrantResponse:
        records = self._support.read_under_grant(request.subject_id, request.grant_id)
        return pb.ReadUnderGrantResponse(records=[record_message(r) for r in records])
