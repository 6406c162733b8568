"""Which subjects may be written, and what a write does when a re-key overtook it.

A write reads the subject, seals under the key the subject row names, and commits only
if the row still names that key (compare-and-set). A re-key that committed in between
destroyed the key just read: the write meets KeyDestroyedError and reads again. An
erasure that started in between is what destroyed it: the write is refused.
"""

from __future__ import annotations

from vault.crypto.record_crypto import RecordCrypto
from vault.errors import KeyDestroyedError, SubjectShredded
from vault.storage import RecordLike, Storage, SubjectKeyInfo
from vault.vocabulary import WRITABLE


def writable(info: SubjectKeyInfo) -> SubjectKeyInfo:
    """``info``, if its subject's records may be written (and it has a key).

    Raises:
        SubjectShredded: the subject is erased, or being erased.
    """
    if info.state not in WRITABLE or info.wrapped_dek is None:
        raise SubjectShredded("the subject was erased", subject_id=info.subject_id)
    return info


def rekeyed_since(storage: Storage, info: SubjectKeyInfo) -> bool:
    """For a write that met KeyDestroyedError on ``info``'s key: whether a re-key
    moved the subject to another key since ``info`` was read (read again and seal
    anew). Raises SubjectShredded if an erasure started meanwhile, which is what
    destroyed the key then."""
    return writable(storage.subject(info.subject_id)).key_id != info.key_id


def decrypt_current(
    storage: Storage, crypto: RecordCrypto, info: SubjectKeyInfo, stored: RecordLike
) -> dict[str, str] | None:
    """Decrypt a record about to be rewritten; None when a re-key committed since
    ``info`` was read and destroyed its key (the caller reads again)."""
    try:
        return crypto.decrypt(info, stored)
    except KeyDestroyedError:
        if rekeyed_since(storage, info):
            return None
        raise
