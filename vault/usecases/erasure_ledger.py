"""The erasure ledger: every destroyed key, recorded outside the data database and the KMS.

Each destruction (a subject's key at its erasure, a bucket's key at its expiry, a key
retired by a re-key) is appended *before* the key is destroyed, and so before the
erasure is acknowledged. An entry names ids only — kind, key id, subject or bucket id —
never personal data. Entries form a hash chain: each one's hash covers its seq, time,
kind, ids and the previous entry's hash, so an entry changed, removed or inserted breaks
every hash after it. The chain's head is signed with the KMS signing key (the audit
checkpoint key, :mod:`vault.audit.signing`) periodically by the restore fence and on
demand; a signed head vouches for every entry up to it.

The rows live in their own database (:mod:`vault.storage.erasure_ledger`): by default
``DATA_DIR/ledger/erasures.db``, apart from ``oubli.db`` and the keystore, so restoring
either from a backup does not roll the ledger back. The restore fence
(:mod:`vault.usecases.restore_fence`) reads it to erase again what a restore brought back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vault.audit.signing import SigningKey
from vault.clock import Clock, utc_now
from vault.storage.erasure_ledger import (
    GENESIS_HASH,
    LedgerEntry,
    LedgerRepository,
    NewLedgerEntry,
    SignedHead,
    make_ledger_engine,
)
from vault.vocabulary import DestroyedKeyKind

#: Kinds of entry: what the destroyed key protected (vault.vocabulary).
SUBJECT = DestroyedKeyKind.SUBJECT
BUCKET = DestroyedKeyKind.BUCKET
RETIRED = DestroyedKeyKind.RETIRED

ENTRY_CONTEXT = b"oubli-erasure-ledger-entry/v1\n"
HEAD_CONTEXT = b"oubli-erasure-ledger-head/v1\n"


def entry_hash(
    seq: int,
    at: str,
    kind: str,
    key_id: str,
    subject_id: str | None,
    bucket_id: str | None,
    prev_hash: str,
) -> str:
    """The hash of one entry (SHA-256 over a context prefix and its fields as JSON)."""
    fields = [seq, at, kind, key_id, subject_id or "", bucket_id or "", prev_hash]
    body = json.dumps(fields, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(ENTRY_CONTEXT + body).hexdigest()


def head_message(seq: int, head_hash: str) -> bytes:
    """What a signed head signs."""
    return HEAD_CONTEXT + f"{seq}\n{head_hash}".encode("ascii")


@dataclass(frozen=True, slots=True)
class LedgerVerification:
    ok: bool
    #: Entries checked.
    checked: int
    #: The first entry (or signed head) that does not verify; 0 when ok.
    first_broken_seq: int = 0
    #: Empty when ok, else e.g. ENTRY_HASH_MISMATCH, CHAIN_BROKEN, HEAD_SIGNATURE_INVALID.
    reason: str = ""


class ErasureLedger:
    """Append destructions, read the chain, sign and verify its head."""

    def __init__(self, url: str, *, mirror_dir: Path | None = None, clock: Clock = utc_now):
        self.clock = clock
        self.url = url
        self._rows = LedgerRepository(make_ledger_engine(url), self._link, mirror_dir)

    @property
    def rows(self) -> LedgerRepository:
        return self._rows

    def _link(self, seq: int, prev: str, new: Sequence[NewLedgerEntry]) -> list[LedgerEntry]:
        at = self.clock().isoformat()
        linked: list[LedgerEntry] = []
        for item in new:
            seq += 1
            digest = entry_hash(
                seq, at, item.kind, item.key_id, item.subject_id, item.bucket_id, prev
            )
            linked.append(
                LedgerEntry(
                    seq, at, item.kind, item.key_id, item.subject_id, item.bucket_id, prev, digest
                )
            )
            prev = digest
        return linked

    def append(self, items: Sequence[NewLedgerEntry]) -> list[int]:
        """Record the destructions ``items`` durably (one commit for concurrent appends);
        each one's seq. A key recorded already keeps its first entry."""
        return self._rows.append(items)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry; seq 0 when empty."""
        return self._rows.head()

    def entries(self, after: int = 0) -> Iterator[LedgerEntry]:
        return self._rows.entries(after)

    def sign_head(self, key: SigningKey) -> SignedHead | None:
        """Sign the current head with ``key`` and store the signed head (None when the
        ledger is empty).

        Raises:
            Unavailable: the KMS or the ledger's database could not be reached.
            FailedPrecondition: the signing key is missing or refused.
        """
        seq, digest = self.head()
        if seq == 0:
            return None
        signature = key.sign_message(head_message(seq, digest))
        signed = SignedHead(seq, digest, self.clock().isoformat(), key.key_id, signature)
        self._rows.add_signed_head(signed)
        return signed

    def verify(self, key: SigningKey | None = None) -> LedgerVerification:
        """Walk the whole chain: every seq in order, every hash recomputed and linked;
        the tip and every signed head match their entry, and with ``key`` each head's
        signature verifies."""
        prev, expected, checked = GENESIS_HASH, 1, 0
        hashes: dict[int, str] = {}
        for e in self.entries():
            if e.seq != expected or e.prev_hash != prev:
                return LedgerVerification(False, checked, expected, "CHAIN_BROKEN")
            recomputed = entry_hash(
                e.seq, e.at, e.kind, e.key_id, e.subject_id, e.bucket_id, e.prev_hash
            )
            if recomputed != e.hash:
                return LedgerVerification(False, checked, e.seq, "ENTRY_HASH_MISMATCH")
            hashes[e.seq] = e.hash
            prev, expected, checked = e.hash, expected + 1, checked + 1
        tip_seq, tip_hash = self.head()
        if (tip_seq, tip_hash) != (expected - 1, prev):
            return LedgerVerification(False, checked, tip_seq, "TIP_MISMATCH")
        for head in self._rows.signed_heads():
            if hashes.get(head.seq) != head.hash:
                return LedgerVerification(False, checked, head.seq, "SIGNED_HEAD_MISMATCH")
            if key is not None and (
                head.key_id != key.key_id
                or not key.verify_message(head_message(head.seq, head.hash), head.signature)
            ):
                return LedgerVerification(False, checked, head.seq, "HEAD_SIGNATURE_INVALID")
        return LedgerVerification(True, checked)

    def close(self) -> None:
        self._rows.engine.dispose()
