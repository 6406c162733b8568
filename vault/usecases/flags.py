"""A change of a subject's rights flags (restriction, objections, consents) made under its
row lock, so concurrent rights calls on one subject never undo each other."""

from __future__ import annotations

from collections.abc import Callable

from vault.errors import FailedPrecondition
from vault.ids import check_id
from vault.storage import SubjectFlags, SubjectKeyInfo
from vault.usecases.service import SubjectView, VaultService


def change_flags(
    vault: VaultService, subject_id: str, change: Callable[[SubjectKeyInfo], SubjectFlags]
) -> SubjectView:
    """Apply ``change`` to the subject's flags as they stand under its row lock; the
    subject as changed."""
    check_id("subject_id", subject_id)
    if vault.storage.change_flags(subject_id, vault.clock(), change) is None:
        vault.writable_subject(subject_id)  # raises NOT_FOUND / SHREDDED
        raise FailedPrecondition("SUBJECT_CHANGED", "the subject changed; retry")
    return vault.get_subject(subject_id)
