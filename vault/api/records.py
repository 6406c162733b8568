"""RecordService: create, read, list, update, delete, RecordEvent, batch put and get.

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.api.messages import item_error, record_message
from vault.errors import OubliError
from vault.usecases.batches import BulkOps, NewRecord, RecordRead
from vault.usecases.service import VaultService


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
            erase_everywhere=request.erase_everywhere,
        )
        return pb.UpdateRecordResponse(
            record=record_message(view),
            erased_everywhere=self._vault.erases_everywhere(
                view.category, request.erase_everywhere
            ),
        )

    def DeleteRecord(
        self, request: pb.DeleteRecordRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRecordResponse:
        erased = self._vault.delete_record(
            request.subject_id, request.record_id, erase_everywhere=request.erase_everywhere
        )
        return pb.DeleteRecordResponse(erased_everywhere=erased)

    def RecordEvent(
        self, request: pb.RecordEventRequest, context: grpc.ServicerContext
    ) -> pb.RecordEventResponse:
        view = self._vault.record_event(request.subject_id, request.record_id, request.event)
        return pb.RecordEventResponse(record=record_message(view, with_fields=False))
