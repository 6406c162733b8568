"""Destroying a key that protected data: a subject's, a retired one, a bucket's.

One way for every caller (erasure, batch erasure, re-key, retention buckets, reconcile
after a KMS restore): the DEK leaves this process's cache first, then the KMS destroys
the key, and a KMS failure becomes a domain error. Destroying is idempotent, so a
retry, or ``oubli reconcile``, may destroy the same key again.
"""

from __future__ import annotations

from kms.base import KmsError
from vault.crypto.record_crypto import RecordCrypto
from vault.errors import kms_error
from vault.storage import Storage


def destroy_key(crypto: RecordCrypto, key_id: str) -> None:
    """Evict ``key_id``'s DEK from the cache and destroy the key in the KMS.

    Raises:
        Unavailable, KmsRefused: the KMS could not destroy it (safe to retry).
    """
    crypto.cache.evict(key_id)
    try:
        crypto.kms.destroy_key(key_id)
    except KmsError as e:
        raise kms_error(e) from e


def destroy_ledger_keys(
    storage: Storage, crypto: RecordCrypto, subject_id: str | None = None
) -> int:
    """Destroy (again) every key the key ledger lists, all or one subject's; returns
    how many."""
    key_ids = storage.ledger_key_ids(subject_id)
    for key_id in key_ids:
        destroy_key(crypto, key_id)
    return len(key_ids)
