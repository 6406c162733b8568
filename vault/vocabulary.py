"""oubli's domain vocabulary: the states and kinds the domain and storage share.

String enums: a member equals its value (``SubjectState.ACTIVE == "active"``), which is
what the database stores, so rows and statements need no conversion table.
"""

from __future__ import annotations

from enum import StrEnum


class SubjectState(StrEnum):
    """A subject's lifecycle: open (active, closed), being erased, erased but for
    legal-hold records, erased."""

    ACTIVE = "active"
    CLOSED = "closed"
    SHREDDING = "shredding"
    HELD = "held"
    SHREDDED = "shredded"


#: States whose records may be written (and read, purposes permitting).
WRITABLE = (SubjectState.ACTIVE, SubjectState.CLOSED)


class KeyScheme(StrEnum):
    """Which key seals a record: the subject's DEK; HKDF of the subject's and an expiry
    bucket's DEKs; or a legal-hold bucket's DEK alone."""

    SUBJECT = "subject"
    EXPIRY = "expiry"
    HOLD = "hold"


class BucketKind(StrEnum):
    """A retention bucket's purpose: records expiring with it, or held by law past an
    erasure."""

    EXPIRY = "expiry"
    HOLD = "hold"


class BucketState(StrEnum):
    """A retention bucket's key: live, being destroyed, destroyed."""

    ACTIVE = "active"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


class RequestState(StrEnum):
    """A rights request's status."""

    OPEN = "open"
    COMPLETED = "completed"
    REJECTED = "rejected"


class DestroyedKeyKind(StrEnum):
    """What a destroyed KMS key protected: the kind of a key ledger and erasure ledger
    entry."""

    #: A subject's key, destroyed by its erasure.
    SUBJECT = "subject"
    #: A retention bucket's key, destroyed when its period ended.
    BUCKET = "bucket"
    #: A key a subject (re-key, DEK rotation, record erasure) or the blind index (index
    #: key rotation) left: destroyed after the move committed.
    RETIRED = "retired"
