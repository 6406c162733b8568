"""gRPC servicers: proto <-> domain conversion and nothing else.

Errors are raised as domain exceptions and turned into statuses by
vault.interceptors.ServiceInterceptor.
"""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from clients.oubli_v1 import vault_pb2 as pb
from clients.oubli_v1 import vault_pb2_grpc as pb_grpc
from vault.clock import Clock
from vault.export import export_json
from vault.service import RecordView, ShredReceipt, SubjectView, VaultService

_STATE = {
    "active": pb.SUBJECT_STATE_ACTIVE,
    "shredding": pb.SUBJECT_STATE_SHREDDING,
    "shredded": pb.SUBJECT_STATE_SHREDDED,
}


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def subject_message(view: SubjectView) -> pb.Subject:
    return pb.Subject(
        subject_id=view.subject_id,
        state=_STATE[view.state],
        create_time=_ts(view.created_at),
        update_time=_ts(view.updated_at),
        record_count=view.record_count,
    )


def record_message(view: RecordView) -> pb.Record:
    return pb.Record(
        subject_id=view.subject_id,
        record_id=view.record_id,
        category=view.category,
        fields=view.fields,
        version=view.version,
        origin=view.origin,
        create_time=_ts(view.created_at),
        update_time=_ts(view.updated_at),
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
    )


class SubjectServicer(pb_grpc.SubjectServiceServicer):
    def __init__(self, vault: VaultService, clock: Clock) -> None:
        self._vault = vault
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
        document = export_json(self._vault, request.subject_id, self._clock())
        return pb.ExportSubjectResponse(json=document, content_type="application/json")


class RecordServicer(pb_grpc.RecordServiceServicer):
    def __init__(self, vault: VaultService) -> None:
        self._vault = vault

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
        view = self._vault.get_record(request.subject_id, request.record_id)
        return pb.GetRecordResponse(record=record_message(view))

    def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.ServicerContext
    ) -> pb.ListRecordsResponse:
        page = self._vault.list_records(
            request.subject_id, request.category, request.page_size, request.page_token
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
