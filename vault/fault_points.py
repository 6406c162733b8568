"""Fault points: where a test may have the server killed in the middle of destroying.

``fault_point(name)`` SIGKILLs the current process when the environment variable
``OUBLI_FAULT_POINT`` names that point *and* ``OUBLI_TESTING=1`` is set too; both are
read once, at import. Without them a point costs one comparison with None. They are
for tests only (tests/integration/test_crash_recovery.py): no operator sets them.

The points, in the order each path reaches them:

Erasure (vault/usecases/erasure.py: ShredSubject, BatchShredSubjects, the retention
job's erasures, the restore fence's):

- ``erasure.marked``: the subjects are committed ``shredding``; legal records not yet
  held, nothing in the erasure ledger, no key destroyed.
- ``erasure.ledger_appended``: the keys are in the erasure ledger; none destroyed.
- ``erasure.key_destroyed``: right after a subject's key is destroyed; in a batch,
  the first destruction to complete (the others may or may not have happened).
- ``erasure.keys_destroyed``: every key of the call destroyed; the finish transaction
  (records deleted, receipts written) not run.

Re-key (vault/usecases/rekey.py: consent withdrawal):

- ``rekey.committed``: the new key and the re-encrypted records are committed, the
  dropped records deleted; the old key is in the database's key ledger only.
- ``rekey.ledger_appended``: the old key is in the erasure ledger, not destroyed.
- ``rekey.key_destroyed``: the old key is destroyed; the database's ledger position
  not raised.

Blind-index key rotation (vault/usecases/index_rotation.py: ``oubli keys rotate index``):

- ``index_rotation.committed``: the old generation is retired (its rows and key row
  deleted); its KMS key is in the database's key ledger only, not destroyed.
- ``index_rotation.ledger_appended``: the old key is in the erasure ledger, not
  destroyed.

Bucket destruction (vault/usecases/retention.py: the retention job):

- ``retention.bucket_marked``: the bucket is committed ``destroying``; its key not in
  the erasure ledger, not destroyed.
- ``retention.bucket_key_destroyed``: the bucket's key is in the ledger and destroyed;
  its rows not deleted (``finish_bucket`` not run).

Key rotation (vault/usecases/kek_rotation.py: ``oubli keys rotate subjects|buckets``);
nothing is destroyed but old versions, and only once trimmed:

- ``kek_rotation.rotated``: the KMS key has a new version; the row still holds the DEK
  wrapped under the old one (the new version is unused, harmless).
- ``kek_rotation.stored``: the re-wrap is committed; the old version still unwraps
  (``min_decryption_version`` not raised: the trim pass raises it first).
- ``kek_rotation.trimmed``: the old versions are trimmed from the KMS; the row still
  says a trim is pending (the next pass trims again, a no-op, and clears it).
"""

from __future__ import annotations

import os
import signal

#: The point this process dies at, or None (the variables unset, or not a test run).
_ARMED: str | None = (
    os.environ.get("OUBLI_FAULT_POINT") or None if os.environ.get("OUBLI_TESTING") == "1" else None
)


def fault_point(name: str) -> None:
    """SIGKILL this process if the test armed ``name``; otherwise nothing."""
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
