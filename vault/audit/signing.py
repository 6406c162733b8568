"""The checkpoint signing key: an Ed25519 key in the KMS (a Transit ``ed25519`` key, or
the local keystore's), named by its id; KMS failures as domain errors.

The key rotates (:mod:`vault.usecases.signing_rotation`): a new version signs, the older
ones are kept. A signature names the version that made it
(:func:`kms.signatures.signature_key_version`), and the KMS's ``verify`` accepts every
version it holds, so checks here go through the KMS whatever the version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from kms.base import KeyDestroyed, KeyManager, KmsError
from vault.audit.entries import Checkpoint, checkpoint_message
from vault.errors import (
    FailedPrecondition,
    IntegrityFailure,
    KeyDestroyedError,
    OubliError,
    kms_error,
)

T = TypeVar("T")


def signing_key_error(error: KmsError) -> OubliError:
    """The domain error for a KMS error on the signing key: :func:`vault.errors.kms_error`'s,
    except that a destroyed key (AUDIT_SIGNING_KEY_MISSING) or a refused one, e.g. not a
    signing key (AUDIT_SIGNING_KEY_REFUSED), is a precondition of the audit trail."""
    translated = kms_error(error)
    if isinstance(translated, KeyDestroyedError):
        return FailedPrecondition(
            "AUDIT_SIGNING_KEY_MISSING", "the audit signing key does not exist"
        )
    if isinstance(translated, IntegrityFailure):
        return FailedPrecondition(
            "AUDIT_SIGNING_KEY_REFUSED", "the KMS refused the audit signing key"
        )
    return translated


class SigningKey:
    """The KMS key ``key_id`` that signs checkpoints, and checks their signatures."""

    def __init__(self, kms: KeyManager, key_id: str) -> None:
        self._kms = kms
        self.key_id = key_id

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except KmsError as e:
            raise signing_key_error(e) from e

    def ensure(self) -> None:
        """Create the key in the KMS unless it exists.

        Raises:
            Unavailable: the KMS could not be reached.
            KmsRefused: the KMS refused oubli's credentials.
        """
        if self._call(lambda: self._kms.key_exists(self.key_id)):
            return
        try:
            self._call(lambda: self._kms.create_signing_key(self.key_id))
        except FailedPrecondition:
            # Another replica created it meanwhile; anything else is still an error.
            if not self._call(lambda: self._kms.key_exists(self.key_id)):
                raise

    def sign(self, seq: int, head_hash: str) -> bytes:
        """The signature of the chain head ``(seq, head_hash)``."""
        message = checkpoint_message(seq, head_hash)
        return self._call(lambda: self._kms.sign(self.key_id, message))

    def sign_message(self, message: bytes) -> bytes:
        """The signature of ``message`` (another chain's head, e.g. the erasure
        ledger's, under its own context prefix)."""
        return self._call(lambda: self._kms.sign(self.key_id, message))

    def sign_messages(self, messages: Sequence[bytes]) -> list[bytes]:
        """The signatures of ``messages``, in their order, in as few KMS calls as the
        backend allows (Transit: one per 400); all or nothing."""
        return self._call(lambda: self._kms.sign_many(self.key_id, messages))

    def verify_message(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``message``."""
        return self._call(lambda: self._kms.verify(self.key_id, message, signature))

    def signed(self, checkpoint: Checkpoint) -> bool:
        """``checkpoint`` names this key and its signature verifies.

        Raises:
            FailedPrecondition: the key is missing (AUDIT_SIGNING_KEY_MISSING) or is
                not a signing key.
        """
        return checkpoint.key_id == self.key_id and self._call(
            lambda: self._kms.verify(checkpoint.key_id, checkpoint.message, checkpoint.signature)
        )

    def problem(self, checkpoint: Checkpoint) -> str | None:
        """None if ``checkpoint`` is signed by this key, else a reason code:
        ``CHECKPOINT_KEY_UNTRUSTED`` (another key id), ``CHECKPOINT_KEY_MISSING`` (the
        key is gone from the KMS) or ``CHECKPOINT_SIGNATURE_INVALID``."""
        if checkpoint.key_id != self.key_id:
            return "CHECKPOINT_KEY_UNTRUSTED"
        try:
            valid = self._kms.verify(checkpoint.key_id, checkpoint.message, checkpoint.signature)
        except KeyDestroyed:
            return "CHECKPOINT_KEY_MISSING"
        except KmsError as e:
            raise signing_key_error(e) from e
        return None if valid else "CHECKPOINT_SIGNATURE_INVALID"

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key.

        Raises:
            FailedPrecondition: the key is missing or is not a signing key.
            Unavailable: the KMS could not be reached.
        """
        return self._call(lambda: self._kms.public_key(self.key_id))

    def public_keys(self) -> dict[int, bytes]:
        """The raw Ed25519 public key of every version the KMS holds (version -> key).

        The key rotates (vault/usecases/signing_rotation.py) and its older versions are
        kept: what they signed (checkpoints, ledger heads, receipts) checks offline
        against their own public key, so all of them are published.

        Raises:
            FailedPrecondition: the key is missing or is not a signing key.
            Unavailable: the KMS could not be reached.
        """
        return self._call(lambda: self._kms.public_keys(self.key_id))
