"""SupportService: grants, overview, reads under a grant.

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.access.caller_scope import current_caller
from vault.api.messages import STATE, record_message, timestamp
from vault.usecases.support import Grant, SupportAccess


class SupportServicer(pb_grpc.SupportServiceServicer):
    def __init__(self, support: SupportAccess) -> None:
        self._support = support

    def _grant(self, grant: Grant) -> pb.SupportGrant:
        return pb.SupportGrant(
            grant_id=grant.grant_id,
            subject_id=grant.subject_id,
            ticket_record_id=grant.ticket_record_id,
            granted_by=grant.granted_by,
            create_time=timestamp(grant.created_at),
            expire_time=timestamp(grant.expires_at),
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
            state=STATE[overview.state],
            categories=[
                pb.CategoryOverview(
                    category=c.category,
                    record_count=c.record_count,
                    ciphertext_bytes=c.ciphertext_bytes,
                    oldest_create_time=timestamp(c.oldest_created_at),
                    newest_update_time=timestamp(c.newest_updated_at),
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
