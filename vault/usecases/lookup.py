"""Find a subject by e-mail or phone through the blind index.

The index narrows the search to a few candidate records (tags are short on purpose),
under every live index key generation (two while the index key is rotated,
vault.usecases.index_rotation); each candidate is decrypted and kept only if it really
holds the value. Candidates the
purpose, the caller or the subject's state may not read are skipped silently: a
lookup never reveals more than a read with the same purpose would.
"""

from __future__ import annotations

from vault.access import caller_scope
from vault.crypto.blind_index import INDEXED_FIELDS, KINDS, matches, normalise
from vault.errors import InvalidArgument, OubliError
from vault.usecases.purpose_check import authorize_read
from vault.usecases.service import VaultService

#: kind -> the field names that hold it, in any indexed category
INDEXED = {
    kind: {field for fields in INDEXED_FIELDS.values() for field, k in fields.items() if k == kind}
    for kind in KINDS
}


class SubjectFinder:
    def __init__(self, vault: VaultService) -> None:
        self.vault = vault

    def find(self, kind: str, value: str, purpose: str) -> list[str]:
        if kind not in KINDS:
            raise InvalidArgument("kind", "kind must be email or phone")
        normalised = normalise(kind, value)
        caller_scope.check(purpose=self.vault.catalog.purpose(purpose))
        found: set[str] = set()
        index = self.vault.lookup_index()
        for subject_id, record_id in index.candidates(kind, normalised):
            if subject_id in found:
                continue
            # Candidates that turn out to be someone else are not "accessed": their
            # categories and fields stay out of this call's audit entry.
            scratch = caller_scope.AccessNote()
            try:
                info = self.vault.subject_info(subject_id)
                stored = self.vault.storage.record(subject_id, record_id)
                if stored is None:
                    continue
                spec = self.vault.catalog.category(stored.category)
                caller_scope.check(category=spec)
                authorize_read(self.vault.catalog, spec, purpose, info)
                with caller_scope.noting(scratch):
                    view = self.vault.open_record(info, stored)
            except OubliError:
                continue  # not readable for this purpose or caller: not a match either
            if matches(kind, normalised, stored.category, view.fields):
                found.add(subject_id)
                caller_scope.note(stored.category, [f for f in view.fields if f in INDEXED[kind]])
        if len(found) == 1:
            caller_scope.note_subject(next(iter(found)))  # the audit entry names who was found
        return sorted(found)
