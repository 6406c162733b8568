"""oubli's domain vocabulary: subject states, record-key schemes, bucket states."""

ACTIVE = "active"
CLOSED = "closed"
SHREDDING = "shredding"
HELD = "held"
SHREDDED = "shredded"
#: States whose records may be written (and read, purposes permitting).
WRITABLE = (ACTIVE, CLOSED)

SCHEME_SUBJECT = "subject"
SCHEME_EXPIRY = "expiry"
SCHEME_HOLD = "hold"

BUCKET_ACTIVE = "active"
BUCKET_DESTROYING = "destroying"
BUCKET_DESTROYED = "destroyed"
