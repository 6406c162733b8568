"""Rotation of the audit signing key: a new version of the same KMS key signs from now on.

The audit signing key (``service_keys`` row :data:`~vault.audit.recorder.SIGNING_KEY_NAME`,
its KMS key id chosen once per database) signs the audit checkpoints, the erasure
ledger's heads and the shred receipts. Rotating it asks the KMS for a new version of the
same key id (Transit ``rotate``, or a new row in the local keystore): every signature
made afterwards names the new version, and the key id every checkpoint and signed head
records stays the same.

Older versions are **never** trimmed, nor refused for verification (no minimum
decryption version is raised): every receipt, ledger head and checkpoint signed before
the rotation must keep verifying, both through the KMS (``verify`` accepts any version
still held) and offline against the public keys ``oubli keys public`` publishes, one per
version. A signing key's older versions protect nothing that their removal would erase:
unlike a subject key, only the public half of a version is ever needed again.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from kms.base import KeyManager, KmsError, KmsUnavailable
from vault.audit.recorder import SIGNING_KEY_NAME
from vault.audit.signing import signing_key_error
from vault.clock import Clock
from vault.storage import Storage
from vault.usecases.key_rotation import RotationKind, RotationReport

log = structlog.get_logger("oubli.keys")


class SigningKeyRotation:
    """Rotates the audit signing key at the end of its cryptoperiod (or when forced)."""

    def __init__(self, storage: Storage, kms: KeyManager, clock: Clock) -> None:
        self._storage = storage
        self._kms = kms
        self._clock = clock

    def rotate(self, *, dry_run: bool, force: bool, cryptoperiod: timedelta) -> RotationReport:
        """One pass: rotate the signing key if it is due.

        The key is due when its latest version is ``cryptoperiod`` old or older (its
        ``rotated_at``: creation, or the last rotation), or whenever ``force`` is set. A
        dry run changes nothing and reports whether it is due (``due`` and
        ``remaining``). A rotation is ``KeyManager.rotate_key`` on the key's KMS id,
        then the row's ``rotated_at`` set to now; nothing is ever trimmed
        (``trimmed`` stays 0: older versions must keep verifying).

        A pass interrupted between the two (or two replicas rotating at once) leaves one
        extra version in the KMS: harmless, since every version verifies.

        No server has chosen a signing key yet (no row): nothing is due.

        Raises:
            FailedPrecondition: the KMS no longer holds the key
                (AUDIT_SIGNING_KEY_MISSING) or it is not a signing key
                (AUDIT_SIGNING_KEY_REFUSED).
            KmsRefused: the KMS refused oubli's credentials.
            Unavailable: the database could not be reached. (An unreachable KMS is
                reported as ``failed``: the key is left as it was, to be retried.)
        """
        before = self._kms.calls

        def report(**counts: int) -> RotationReport:
            return RotationReport(
                RotationKind.SIGNING, dry_run, kms_calls=self._kms.calls - before, **counts
            )

        key = self._storage.service_key(SIGNING_KEY_NAME)
        if key is None:
            return report()
        now = self._clock()
        rotated_at = key.rotated_at or key.created_at
        if not (force or now - rotated_at >= cryptoperiod):
            return report()
        if dry_run:
            return report(due=1, remaining=1)
        try:
            version = self._kms.rotate_key(key.key_id)
        except KmsUnavailable:
            log.warning("signing_key_rotation_failed", error_type="KmsUnavailable")
            return report(due=1, failed=1, remaining=1)
        except KmsError as e:
            raise signing_key_error(e) from e
        self._storage.mark_service_key_rotated(SIGNING_KEY_NAME, now, None)
        log.info("signing_key_rotated", key_version=version, forced=force)
        return report(due=1, rotated=1)
