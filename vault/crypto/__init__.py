"""Record cryptography: the envelope, record keys per scheme, the DEK cache, blind-index tags."""
