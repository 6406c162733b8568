"""KeyAdminService: RotateKeys (one pass of a rotation) and GetKeyAges.

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf.duration_pb2 import Duration

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.api.messages import maybe_timestamp, request_time, timestamp
from vault.errors import InvalidArgument
from vault.usecases.key_rotation import KeyRotation, RotationKind

#: Keys one pass may handle at most, and by default.
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000

KINDS = {
    pb.KEY_KIND_SUBJECTS: RotationKind.SUBJECTS,
    pb.KEY_KIND_BUCKETS: RotationKind.BUCKETS,
    pb.KEY_KIND_DEKS: RotationKind.DEKS,
    pb.KEY_KIND_INDEX: RotationKind.INDEX,
    pb.KEY_KIND_SIGNING: RotationKind.SIGNING,
}
KIND_MESSAGES = {kind: message for message, kind in KINDS.items()}


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


class KeyAdminServicer(pb_grpc.KeyAdminServiceServicer):
    def __init__(self, rotation: KeyRotation) -> None:
        self._rotation = rotation

    def RotateKeys(
        self, request: pb.RotateKeysRequest, context: grpc.ServicerContext
    ) -> pb.RotateKeysResponse:
        kind = KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "kind must be one of the KeyKind values")
        limit = request.limit or DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument("limit", f"limit must be between 1 and {MAX_LIMIT}")
        if request.rate < 0 or request.rate != request.rate:  # NaN too
            raise InvalidArgument("rate", "rate must be a positive number of keys per second")
        cutoff = request_time(request, "rotated_before") or self._rotation.cutoff(
            kind, force=request.force
        )
        report = self._rotation.rotate(
            kind,
            dry_run=request.dry_run,
            force=request.force,
            limit=limit,
            rotated_before=cutoff,
            rate=request.rate or None,
        )
        return pb.RotateKeysResponse(
            kind=request.kind,
            dry_run=report.dry_run,
            due=report.due,
            rotated=report.rotated,
            trimmed=report.trimmed,
            failed=report.failed,
            remaining=report.remaining,
            records=report.records,
            kms_calls=report.kms_calls,
            rotated_before=timestamp(cutoff),
        )

    def GetKeyAges(
        self, request: pb.GetKeyAgesRequest, context: grpc.ServicerContext
    ) -> pb.GetKeyAgesResponse:
        return pb.GetKeyAgesResponse(
            ages=[
                pb.KeyAge(
                    kind=KIND_MESSAGES[age.kind],
                    oldest_time=maybe_timestamp(age.oldest),
                    cryptoperiod=_duration(age.cryptoperiod),
                    due=age.due,
                )
                for age in self._rotation.ages()
            ]
        )
