"""proto <-> domain: the message builders every servicer shares (subjects, records,
receipts, rights requests, item errors, timestamps)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from oubli_client.v1 import vault_pb2 as pb
from vault.api.status import status_code_for
from vault.errors import InvalidArgument, OubliError
from vault.storage import RightsRequest
from vault.usecases.receipts import ShredReceipt
from vault.usecases.service import RecordView, SubjectView
from vault.vocabulary import SubjectState

STATE = {
    SubjectState.ACTIVE: pb.SUBJECT_STATE_ACTIVE,
    SubjectState.CLOSED: pb.SUBJECT_STATE_CLOSED,
    SubjectState.SHREDDING: pb.SUBJECT_STATE_SHREDDING,
    SubjectState.HELD: pb.SUBJECT_STATE_HELD,
    SubjectState.SHREDDED: pb.SUBJECT_STATE_SHREDDED,
}


@functools.lru_cache(maxsize=1024)
def timestamp(value: datetime) -> Timestamp:
    """The Timestamp of ``value``; cached, since a batch's records share their times
    (messages copy it when they are built, so the cached one is never changed)."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def maybe_timestamp(value: datetime | None) -> Timestamp | None:
    return None if value is None else timestamp(value)


def request_time(request: Message, field: str) -> datetime | None:
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
        state=STATE[view.state],
        create_time=timestamp(view.created_at),
        update_time=timestamp(view.updated_at),
        record_count=view.record_count,
        restricted=view.restricted,
        objections=view.objections,
        consents=view.consents,
        close_time=maybe_timestamp(view.closed_at),
        scheduled_erasure_time=maybe_timestamp(view.scheduled_shred_at),
        hold_until_time=maybe_timestamp(view.hold_until),
    )


def record_message(view: RecordView, *, with_fields: bool = True) -> pb.Record:
    return pb.Record(
        subject_id=view.subject_id,
        record_id=view.record_id,
        category=view.category,
        fields=view.fields if with_fields else None,
        version=view.version,
        origin=view.origin,
        create_time=timestamp(view.created_at),
        update_time=timestamp(view.updated_at),
        retain_until_time=maybe_timestamp(view.retain_until),
    )


def receipt_message(receipt: ShredReceipt) -> pb.ShredReceipt:
    return pb.ShredReceipt(
        subject_id=receipt.subject_id,
        key_id=receipt.key_id,
        shred_time=timestamp(receipt.shredded_at),
        records_deleted=receipt.records_deleted,
        kms_backend=receipt.kms_backend,
        residual_risk=receipt.residual_risk,
        residual_copies_expire_time=timestamp(receipt.residual_copies_expire_at),
        records_retained=receipt.records_retained,
        retained_until_time=maybe_timestamp(receipt.retained_until),
        ledger_position=receipt.ledger_position,
        signature=receipt.signature,
        signing_key_id=receipt.signing_key_id,
    )


def request_message(request: RightsRequest) -> pb.RightsRequest:
    return pb.RightsRequest(
        request_id=request.request_id,
        subject_id=request.subject_id,
        kind=request.kind,
        status=request.status,
        receive_time=timestamp(request.received_at),
        due_time=timestamp(request.due_at),
        complete_time=maybe_timestamp(request.completed_at),
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
