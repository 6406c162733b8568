"""Data-subject rights beyond read and write: restriction, objection, consent, requests.

Erasure is vault.usecases.erasure, rectification VaultService.update_record,
portability and access vault.usecases.export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from vault.errors import FailedPrecondition, InvalidArgument, RequestNotFound
from vault.ids import check_id, new_id
from vault.storage import RightsRequest, SubjectFlags, SubjectKeyInfo
from vault.usecases.rekey import Rekeying
from vault.usecases.service import SubjectView, VaultService
from vault.vocabulary import RequestState

REQUEST_KINDS = frozenset(
    {"access", "rectification", "erasure", "restriction", "portability", "objection"}
)


@dataclass(frozen=True, slots=True)
class WithdrawalResult:
    subject: SubjectView
    records_destroyed: int


class RightsService:
    def __init__(self, vault: VaultService) -> None:
        self.vault = vault
        self._rekeying = Rekeying(vault.storage, vault.crypto, clock=vault.clock)

    def _change(
        self, subject_id: str, change: Callable[[SubjectKeyInfo], SubjectFlags]
    ) -> SubjectView:
        """Apply ``change`` to the subject's flags as they stand under its row lock, so
        concurrent rights calls on one subject never undo each other."""
        check_id("subject_id", subject_id)
        if self.vault.storage.change_flags(subject_id, self.vault.clock(), change) is None:
            self.vault.writable_subject(subject_id)  # raises NOT_FOUND / SHREDDED
            raise FailedPrecondition("SUBJECT_CHANGED", "the subject changed; retry")
        return self.vault.get_subject(subject_id)

    # --- restriction ----------------------------------------------------------------

    def restrict(self, subject_id: str) -> SubjectView:
        """Right to restriction: only purposes allowed under restriction may read."""
        return self._change(subject_id, lambda _: SubjectFlags(restricted=True))

    def lift_restriction(self, subject_id: str) -> SubjectView:
        return self._change(subject_id, lambda _: SubjectFlags(restricted=False))

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
        return self._change(
            subject_id, lambda info: SubjectFlags(objections=info.objections | {name})
        )

    def withdraw_objection(self, subject_id: str, purpose_name: str) -> SubjectView:
        name = self._objectable(purpose_name)
        return self._change(
            subject_id, lambda info: SubjectFlags(objections=info.objections - {name})
        )

    # --- consent --------------------------------------------------------------------

    def _consent(self, name: str) -> str:
        if name not in self.vault.catalog.consents:
            raise InvalidArgument("consent", "unknown consent (see the policy catalog)")
        return name

    def grant_consent(self, subject_id: str, consent: str) -> SubjectView:
        name = self._consent(consent)
        now = self.vault.clock().isoformat()
        return self._change(
            subject_id, lambda info: SubjectFlags(consents={name: now, **info.consents})
        )

    def withdraw_consent(self, subject_id: str, consent: str) -> WithdrawalResult:
        """Withdraw a consent; data stored under it is destroyed by re-keying.

        Records of categories that need the consent (e.g. stored card numbers) are
        deleted and the subject moves to a new KMS key, the old one destroyed: no
        database copy, backups included, can yield them any more.
        """
        name = self._consent(consent)
        bound = [c.name for c in self.vault.catalog.categories.values() if c.consent == name]
        if not bound:
            view = self._change(
                subject_id,
                lambda info: SubjectFlags(
                    consents={k: v for k, v in info.consents.items() if k != name}
                ),
            )
            return WithdrawalResult(view, 0)
        info = self.vault.writable_subject(subject_id)
        if name not in info.consents and not self.vault.storage.records(
            subject_id, categories=bound
        ):
            # Nothing to withdraw and nothing stored under it (a writer that checked the
            # consent before it was withdrawn met that withdrawal's re-key). A retry
            # after a failed key destruction still destroys the retired key.
            self._rekeying.destroy_retired_keys(subject_id)
            return WithdrawalResult(self.vault.get_subject(subject_id), 0)
        # Data depends on this consent: the subject moves to a new key, even when it
        # holds no such record now. A record being written at this moment was
        # sealed under the old key, so it either is in the set the re-key drops or is
        # refused for its stale key and then for the missing consent; and a retried
        # withdrawal destroys any retired key left from an earlier attempt.
        destroyed = self._rekeying.rekey(subject_id, bound, withdrawn_consent=name)
        self._rekeying.destroy_retired_keys(subject_id)
        return WithdrawalResult(self.vault.get_subject(subject_id), destroyed)

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
