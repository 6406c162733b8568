"""LookupService: FindSubject.

proto <-> domain conversion and nothing else: errors are raised as domain exceptions and
turned into statuses by vault.api.interceptor."""

from __future__ import annotations

import grpc

from oubli_client.v1 import vault_pb2 as pb
from oubli_client.v1 import vault_pb2_grpc as pb_grpc
from vault.errors import InvalidArgument
from vault.usecases.lookup import SubjectFinder


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
