"""Consent: granting it, and withdrawing it — which destroys the data stored under it.

Records of categories that need a consent (e.g. stored card numbers) are deleted at its
withdrawal and the subject moves to a new KMS key (vault.usecases.rekey), the old key
destroyed: no database copy, backups included, can yield them any more.
"""

from __future__ import annotations

from dataclasses import dataclass

from vault.errors import InvalidArgument
from vault.storage import SubjectFlags
from vault.usecases.flags import change_flags
from vault.usecases.service import SubjectView, VaultService


@dataclass(frozen=True, slots=True)
class WithdrawalResult:
    subject: SubjectView
    records_destroyed: int


class Consents:
    """Grant and withdraw the catalog's consents for a subject."""

    def __init__(self, vault: VaultService) -> None:
        self.vault = vault
        self._rekeying = vault.rekeying

    def _known(self, name: str) -> str:
        if name not in self.vault.catalog.consents:
            raise InvalidArgument("consent", "unknown consent (see the policy catalog)")
        return name

    def grant(self, subject_id: str, consent: str) -> SubjectView:
        name = self._known(consent)
        now = self.vault.clock().isoformat()
        return change_flags(
            self.vault, subject_id, lambda info: SubjectFlags(consents={name: now, **info.consents})
        )

    def withdraw(self, subject_id: str, consent: str) -> WithdrawalResult:
        """Withdraw a consent; data stored under it is destroyed by re-keying.

        Records of categories that need the consent (e.g. stored card numbers) are
        deleted and the subject moves to a new KMS key, the old one destroyed: no
        database copy, backups included, can yield them any more.
        """
        name = self._known(consent)
        bound = [c.name for c in self.vault.catalog.categories.values() if c.consent == name]
        if not bound:
            view = change_flags(
                self.vault,
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
