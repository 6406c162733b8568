"""The RPC table (vault/api/rpcs.py) declares exactly the RPCs of the proto, and the lists
that used to be kept by hand derive from it."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor

from oubli_client.v1 import vault_pb2 as pb
from vault.api import rpcs
from vault.api.rpcs import RPCS, Content

PROTO_RPCS = {
    f"{service.name}.{method.name}"
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}


def test_the_table_declares_exactly_the_rpcs_of_the_proto() -> None:
    # A new RPC in proto/oubli/v1/vault.proto fails here until it is declared: whether
    # it changes data and what content its response may carry.
    assert set(RPCS) == PROTO_RPCS
    assert set(pb.DESCRIPTOR.services_by_name) == rpcs.SERVICES


def _carries_fields(message: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """The message type can hold a record's field map or a JSON document of them."""
    if message.full_name in seen:
        return False
    for field in message.fields:
        if field.name == "fields" and field.message_type is not None:
            return True
        if field.type == field.TYPE_BYTES and field.name in ("json", "chunk"):
            return True
        if field.message_type is not None and _carries_fields(
            field.message_type, seen | {message.full_name}
        ):
            return True
    return False


def test_rpcs_whose_responses_cannot_carry_values_are_declared_without_content() -> None:
    """The table may say NONE for a response type that could carry values (RecordEvent,
    BatchCreateRecords answer records without fields), never the other way round."""
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            rpc = RPCS[f"{service.name}.{method.name}"]
            if rpc.content in (Content.AS_WRITTEN, Content.UNDER_GRANT):
                assert _carries_fields(method.output_type), rpc.name
            if rpc.content is Content.BY_PURPOSE and rpc.name != "LookupService.FindSubject":
                assert _carries_fields(method.output_type), rpc.name


def test_derived_lists() -> None:
    assert {
        "SubjectService.GetSubject",
        "SubjectService.ExportSubject",
        "SubjectService.StreamExport",
        "RecordService.GetRecord",
        "RecordService.BatchGetRecords",
        "RecordService.ListRecords",
        "RightsService.GetAccessReport",
        "RightsService.ListRightsRequests",
        "AuditService.QueryAudit",
        "AuditService.VerifyAudit",
        "AuditService.ListAuditCheckpoints",
        "LookupService.FindSubject",
        "SupportService.GetOverview",
        "SupportService.ReadUnderGrant",
        "KeyAdminService.GetKeyAges",
    } == rpcs.READ_ONLY
    assert {
        "SubjectService.ExportSubject",
        "SubjectService.StreamExport",
        "RecordService.GetRecord",
        "RecordService.BatchGetRecords",
        "RecordService.ListRecords",
        "RightsService.GetAccessReport",
        "LookupService.FindSubject",
        "SupportService.ReadUnderGrant",
    } == rpcs.DISCLOSING
    # Starting a retention clock is a change that discloses nothing (issue 9, finding 1).
    assert RPCS["RecordService.RecordEvent"].changes
    assert RPCS["RecordService.RecordEvent"].content is Content.NONE


def test_matching_and_declared() -> None:
    assert {r.method for r in rpcs.matching("AuditService.*")} == {
        "QueryAudit",
        "VerifyAudit",
        "ListAuditCheckpoints",
    }
    assert [r.name for r in rpcs.matching("RecordService.GetRecord")] == ["RecordService.GetRecord"]
    assert rpcs.matching("RecordService.Nope") == []
    assert rpcs.matching("NopeService.*") == []
    assert rpcs.declared("RecordService", "Nope") is None
