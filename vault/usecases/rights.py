"""Data-subject rights beyond read and write: restriction, objection, consent, requests.

Consent is vault.usecases.consent, erasure vault.usecases.erasure, rectification
VaultService.update_record, portability and access vault.usecases.export.
"""

from __future__ import annotations

from datetime import timedelta

from vault.errors import FailedPrecondition, InvalidArgument, RequestNotFound
from vault.ids import check_id, new_id
from vault.storage import RightsRequest, SubjectFlags
from vault.usecases.consent import Consents, WithdrawalResult
from vault.usecases.flags import change_flags
from vault.usecases.service import SubjectView, VaultService
from vault.vocabulary import RequestState

REQUEST_KINDS = frozenset(
    {"access", "rectification", "erasure", "restriction", "portability", "objection"}
)


class RightsService:
    def __init__(self, vault: VaultService) -> None:
        self.vault = vault
        self.consents = Consents(vault)

    # --- restriction ----------------------------------------------------------------

    def restrict(self, subject_id: str) -> SubjectView:
        """Right to restriction: only purposes allowed under restriction may read."""
        return change_flags(self.vault, subject_id, lambda _: SubjectFlags(restricted=True))

    def lift_restriction(self, subject_id: str) -> SubjectView:
        return change_flags(self.vault, subject_id, lambda _: SubjectFlags(restricted=False))

    # --- objection ------------------------------------------------------------------

    def _objectable(self, purpose_name: str) -> str:
        purpose = self.vault.catalog.purpose(purpose_name)
        if not purpose.objectable:
            raise FailedPrecondition(
                "NOT_OBJECTABLE",
                f"purpose {purpose.name} rests on the contract or the law: it cannot be "
                "objected to",
                purpose=purpose.name,
            )
        return purpose.name

    def object_to(self, subject_id: str, purpose_name: str) -> SubjectView:
        name = self._objectable(purpose_name)
        return change_flags(
            self.vault, subject_id, lambda info: SubjectFlags(objections=info.objections | {name})
        )

    def withdraw_objection(self, subject_id: str, purpose_name: str) -> SubjectView:
        name = self._objectable(purpose_name)
        return change_flags(
            self.vault, subject_id, lambda info: SubjectFlags(objections=info.objections - {name})
        )

    # --- consent (vault.usecases.consent) ------------------------------------------

    def grant_consent(self, subject_id: str, consent: str) -> SubjectView:
        return self.consents.grant(subject_id, consent)

    def withdraw_consent(self, subject_id: str, consent: str) -> WithdrawalResult:
        return self.consents.withdraw(subject_id, consent)

    # --- requests -------------------------------------------------------------------

    def open_request(self, subject_id: str, kind: str) -> RightsRequest:
        if kind not in REQUEST_KINDS:
            raise InvalidArgument("kind", f"kind must be one of {', '.join(sorted(REQUEST_KINDS))}")
        self.vault.subject_info(subject_id)
        now = self.vault.clock()
        settings = self.vault.catalog.settings
        # Seed 003: erasure carried out within 30 days; seed 000: answers within 30 days.
        days = (
            min(settings.erasure_deadline_days, settings.rights_request_answer_days)
            if kind == "erasure"
            else settings.rights_request_answer_days
        )
        request = RightsRequest(
            new_id(), subject_id, kind, RequestState.OPEN, now, now + timedelta(days=days), None
        )
        self.vault.storage.insert_request(request)
        return request

    def close_request(self, request_id: str, status: str = RequestState.COMPLETED) -> RightsRequest:
        check_id("request_id", request_id)
        if status not in (RequestState.COMPLETED, RequestState.REJECTED):
            raise InvalidArgument("status", "status must be completed or rejected")
        closing = RequestState(status)
        if not self.vault.storage.close_request(request_id, closing, self.vault.clock()):
            found = self.vault.storage.request(request_id)
            if found is None:
                raise RequestNotFound("rights request not found", request_id=request_id)
            raise FailedPrecondition("REQUEST_CLOSED", "the request is already closed")
        closed = self.vault.storage.request(request_id)
        assert closed is not None
        return closed

    def list_requests(
        self, subject_id: str = "", *, open_only: bool = False, overdue_only: bool = False
    ) -> list[RightsRequest]:
        if subject_id:
            check_id("subject_id", subject_id)
        return self.vault.storage.requests(
            subject_id=subject_id or None,
            status=RequestState.OPEN if (open_only or overdue_only) else None,
            due_before=self.vault.clock() if overdue_only else None,
        )
