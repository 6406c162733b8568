"""AuditService: query, verify, checkpoints.

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

from datetime import UTC

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.access.caller_policy import CALLER_NAME
from vault.api.messages import request_time, timestamp
from vault.audit.chain import AuditLog
from vault.audit.entries import Checkpoint
from vault.errors import InvalidArgument
from vault.ids import check_id


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
            since=request_time(request, "since"),
            until=request_time(request, "until"),
            limit=request.limit or 1000,
        )
        return pb.QueryAuditResponse(
            entries=[
                pb.AuditEntry(
                    seq=e.seq,
                    time=timestamp(e.at),
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
                    time=timestamp(c.at),
                    signature=c.signature,
                    key_id=c.key_id,
                    key_version=c.key_version,
                )
                for c in checkpoints
            ],
            public_key=self._audit.public_key(),
            key_id=self._audit.signing_key_id,
            public_keys=self._audit.public_keys(),
        )


def _exported_checkpoint(message: pb.AuditCheckpoint) -> Checkpoint:
    try:
        at = message.time.ToDatetime(tzinfo=UTC)
    except ValueError:  # its message quotes the value; this one does not
        raise InvalidArgument("exported", "an exported checkpoint's time is out of range") from None
    return Checkpoint(message.seq, message.hash, message.signature, message.key_id, at)
