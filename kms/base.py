"""The KMS seam: the one interface every key backend implements.

A *subject key* lives only in the KMS and never leaves it. It wraps the subject's
data-encryption key (DEK); the wrapped DEK is stored in the database next to the
ciphertext, the plaintext DEK only in a bounded in-process cache. Destroying the
subject key therefore makes every stored copy of the wrapped DEK, and so every copy
of the subject's ciphertext, useless.

Backends translate their own exceptions (hvac, sqlite3, ...) into the errors below;
nothing foreign crosses this seam.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass


class KmsError(Exception):
    """Root of every KMS error. Messages name key ids only, never key material."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class KeyDestroyed(KmsError):
    """The key does not exist (destroyed, or never created): its data is unrecoverable."""


class KmsAccessDenied(KmsError):
    """The KMS refused oubli's own credentials (expired token, missing policy)."""


class KmsUnavailable(KmsError):
    """The KMS could not be reached or answered with a server error; safe to retry."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """A fresh DEK: the plaintext for immediate use, the wrapped form for storage."""

    plaintext: bytes
    wrapped: bytes
    key_version: int

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(wrapped=<{len(self.wrapped)} bytes>, key_version={self.key_version})"


@dataclass(frozen=True, slots=True)
class KeyVersions:
    """The versions a KMS key holds (rotation, :meth:`KeyManager.key_versions`).

    ``latest`` wraps (or signs) from now on; versions below ``min_decryption`` are kept
    but refused for unwrap (and verify); versions below ``min_available`` are gone for
    good (trimmed). Always ``min_available <= min_decryption <= latest``.
    """

    latest: int
    min_decryption: int
    min_available: int


class KeyManager(abc.ABC):
    """A KMS holding one non-exportable key per subject.

    Key ids are chosen by the caller and must be random (they appear in KMS audit
    logs and request paths): ``[a-z0-9_-]{1,64}``, never derived from personal data.

    Every method counts as KMS round trips what it sends to the KMS; ``calls`` is the
    running total, so tests and metrics can check that the hot path makes none.
    """

    #: Short name written into shred receipts, e.g. ``"vault-transit"``.
    backend_name: str = "abstract"

    def __init__(self) -> None:
        self._calls = 0
        self._calls_lock = threading.Lock()

    @property
    def calls(self) -> int:
        """Number of KMS round trips made so far by this instance."""
        return self._calls

    def _count(self, n: int = 1) -> None:
        with self._calls_lock:
            self._calls += n

    @abc.abstractmethod
    def create_key(self, key_id: str) -> None:
        """Create a new subject key named ``key_id``.

        Raises:
            KmsError: the key already exists or the id is invalid.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def generate_data_key(self, key_id: str) -> DataKey:
        """Return a new random 32-byte DEK and its form wrapped by ``key_id``.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Return the plaintext DEK that ``key_id`` wrapped into ``wrapped``.

        Raises:
            KeyDestroyed: ``key_id`` does not exist (the subject was shredded).
            KmsError: ``wrapped`` was not produced by ``key_id``.
            KmsUnavailable: the KMS could not be reached.
        """

    def unwrap_many(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | KmsError]:
        """Unwrap several DEKs; per item either the DEK or the error for that item.

        Backends that can batch override this; the default makes one call per item.

        Raises:
            KmsUnavailable: the KMS could not be reached (nothing is returned).
        """
        results: list[bytes | KmsError] = []
        for key_id, wrapped in items:
            try:
                results.append(self.unwrap(key_id, wrapped))
            except KmsUnavailable:
                raise
            except KmsError as e:
                results.append(e)
        return results

    @abc.abstractmethod
    def destroy_key(self, key_id: str) -> None:
        """Destroy ``key_id`` for good. Idempotent: destroying a missing key succeeds.

        Raises:
            KmsUnavailable: the KMS could not be reached; the key may still exist.
        """

    @abc.abstractmethod
    def key_exists(self, key_id: str) -> bool:
        """Whether ``key_id`` exists (used to confirm a shred).

        Raises:
            KmsUnavailable: the KMS could not be reached.
        """

    # --- rotation -----------------------------------------------------------------------
    #
    # Rotation adds a version to a key (subject, bucket, service or signing key): new
    # wraps and signatures use the latest version, older versions still unwrap or verify
    # until ``min_decryption`` is raised past them, and are gone for good once trimmed.

    @abc.abstractmethod
    def rotate_key(self, key_id: str) -> int:
        """Add a new version to ``key_id``; returns the new latest version.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def rewrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The same DEK, wrapped under the latest version of ``key_id``.

        The plaintext DEK never leaves the KMS (Transit's ``rewrap``).

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``wrapped`` was not produced by ``key_id``, or its version is
                below ``min_decryption`` or trimmed.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def wrapped_version(self, key_id: str, wrapped: bytes) -> int:
        """The key version ``wrapped`` names (read from its format; no KMS call).

        Raises:
            KmsError: ``wrapped`` is not in this backend's format.
        """

    @abc.abstractmethod
    def key_versions(self, key_id: str) -> KeyVersions:
        """The versions ``key_id`` holds.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def set_min_decryption_version(self, key_id: str, version: int) -> None:
        """Refuse unwraps (and verifications) by versions below ``version``; the
        versions are kept, so lowering it again (an operator restoring an older database
        copy) makes them usable again until they are trimmed.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``version`` is above the latest version or below the trimmed ones.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def trim_key(self, key_id: str, min_available_version: int) -> None:
        """Delete the versions of ``key_id`` below ``min_available_version`` for good.

        ``min_available_version`` must not exceed the key's ``min_decryption``.
        Idempotent: trimming to a version already trimmed to succeeds.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``min_available_version`` is above ``min_decryption``.
            KmsUnavailable: the KMS could not be reached.
        """

    # --- signing keys -----------------------------------------------------------------
    #
    # A signing key is an Ed25519 key pair held by the KMS (the audit log signs its
    # chain head with one). Signing and subject keys share one namespace of key ids:
    # ``key_exists`` and ``destroy_key`` apply to both, and an id names one or the other.

    @abc.abstractmethod
    def create_signing_key(self, key_id: str) -> None:
        """Create a new, non-exportable Ed25519 signing key named ``key_id``.

        Raises:
            KmsError: a key (signing or subject) named ``key_id`` already exists, or the
                id is invalid.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def sign(self, key_id: str, data: bytes) -> bytes:
        """Sign ``data`` with the latest version of signing key ``key_id``.

        Returns:
            The signature in the backend's own format (it names the key version):
            Transit's ``vault:vN:<base64>`` as ASCII bytes, or, for the local backends,
            one version byte followed by the raw 64-byte Ed25519 signature.
            :func:`kms.signatures.raw_ed25519_signature` extracts the raw signature.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``key_id`` is not a signing key.
            KmsUnavailable: the KMS could not be reached.
        """

    def sign_many(self, key_id: str, items: Sequence[bytes]) -> list[bytes]:
        """Sign each of ``items`` with the latest version of signing key ``key_id``:
        the signatures, as :meth:`sign` returns them, in the order of ``items``.

        All or nothing: one item that cannot be signed fails the whole call, with the
        error :meth:`sign` would raise. Backends that can batch override this; the
        default makes one call per item.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``key_id`` is not a signing key.
            KmsUnavailable: the KMS could not be reached.
        """
        return [self.sign(key_id, data) for data in items]

    @abc.abstractmethod
    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``data`` by ``key_id``.

        A malformed signature is simply not valid: False, not an error.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``key_id`` is not a signing key.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def public_key(self, key_id: str) -> bytes:
        """The raw 32-byte Ed25519 public key of the latest version of ``key_id``.

        With it anyone can check a signature offline, without access to the KMS
        (:func:`kms.signatures.verify_offline`).

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``key_id`` is not a signing key.
            KmsUnavailable: the KMS could not be reached.
        """

    @abc.abstractmethod
    def public_keys(self, key_id: str) -> dict[int, bytes]:
        """Every version of signing key ``key_id`` still held: version -> raw 32-byte
        Ed25519 public key. Signatures made by a rotated-out version still verify
        offline against its public key.

        Raises:
            KeyDestroyed: ``key_id`` does not exist.
            KmsError: ``key_id`` is not a signing key.
            KmsUnavailable: the KMS could not be reached.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, default is no-op
        """Release connections and files."""
