"""RightsService: restriction, objection, consent, rights requests, the access report.

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

import json

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.api.messages import request_json, request_message, subject_message
from vault.api.rpcs import DISCLOSING
from vault.audit.chain import AuditLog
from vault.ids import check_id
from vault.usecases.export import access_report
from vault.usecases.rights import RightsService
from vault.vocabulary import RequestState


class RightsServicer(pb_grpc.RightsServiceServicer):
    def __init__(self, rights: RightsService, audit: AuditLog | None = None) -> None:
        self._rights = rights
        self._vault = rights.vault
        self._audit = audit

    def _readers(self, subject_id: str) -> dict[str, set[str]]:
        """Category -> callers that read it: the callers of RPCs that disclose stored
        values (vault.api.rpcs), from the subject's audit entries."""
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
        closed = self._rights.close_request(
            request.request_id, request.status or RequestState.COMPLETED
        )
        return pb.CloseRightsRequestResponse(request=request_message(closed))

    def ListRightsRequests(
        self, request: pb.ListRightsRequestsRequest, context: grpc.ServicerContext
    ) -> pb.ListRightsRequestsResponse:
        found = self._rights.list_requests(
            request.subject_id, open_only=request.open_only, overdue_only=request.overdue_only
        )
        return pb.ListRightsRequestsResponse(requests=[request_message(r) for r in found])
