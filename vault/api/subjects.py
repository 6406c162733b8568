"""SubjectService: create, read, close and reopen, export, shred (one and many; every
receipt signed with the KMS signing key).

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.api.messages import item_error, receipt_message, subject_message
from vault.clock import Clock
from vault.errors import OubliError
from vault.usecases.erasure import Erasure
from vault.usecases.export import export_chunks, export_json
from vault.usecases.receipts import ReceiptSigner
from vault.usecases.service import VaultService


class SubjectServicer(pb_grpc.SubjectServiceServicer):
    def __init__(
        self, vault: VaultService, erasure: Erasure, clock: Clock, signer: ReceiptSigner
    ) -> None:
        self._vault = vault
        self._erasure = erasure
        self._clock = clock
        self._signer = signer

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
        receipt = self._erasure.shred(request.subject_id, self._signer)
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
        results = self._erasure.shred_many(list(request.subject_ids), self._signer)
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
