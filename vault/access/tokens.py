"""Bearer tokens: records in the data database, created, listed, revoked, rotated.

A token is ``oubli_`` followed by 43 URL-safe base64 characters (32 random bytes). It
is shown once, when made; the database keeps its ``sha256:<hex>`` hash, never the token,
in ``bearer_tokens`` with an id (``tok_`` + 26 characters), the caller it stands for,
when it was made, when it expires, whether it was revoked and what replaced it.

Every replica reads that table on every call (:meth:`TokenRegistry.find`, one lookup by
the hash's unique index), so a revocation or rotation committed by ``oubli token`` on
any machine is seen by every replica from its next call. Nothing is cached: a cache
that must never outlive a revocation needs a read per call anyway (e.g. of a revocation
counter), which costs the same round trip as the lookup itself.

Every change — create, revoke, rotate, import — is written to the audit trail like an
RPC that changes something: a ``STARTED`` entry before (if it cannot be written,
nothing changes), the outcome after. The entries name the caller the token stands for
(``caller``), the action (``token.create``, ``token.revoke``, ``token.rotate``,
``token.import``) and the token ids (``fields``); never a token or a hash.

Before revision 0007, hashes lived in a TOML file per replica (``tokens.toml``). The
server imports that file at start (:meth:`TokenRegistry.import_file`): a hash not yet in
the table becomes a token without expiry (it had none); a hash already there (imported
before, revoked since) is left alone, so importing again never revives a token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from vault.access.caller_policy import CALLER_NAME
from vault.audit.chain import AuditLog
from vault.audit.entries import AuditEvent
from vault.clock import Clock, utc_now
from vault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    OubliError,
    TokenNotFound,
)
from vault.ids import RandomBytes, new_id
from vault.storage.bearer_tokens import BearerTokenRepository, StoredToken

log = structlog.get_logger("oubli.tokens")

TOKEN_PREFIX = "oubli_"  # noqa: S105 - a prefix, not a secret
TOKEN_ID_PREFIX = "tok_"  # noqa: S105
#: A token's life unless told otherwise: a leaked token nobody noticed stops working
#: within a quarter, and rotating four times a year stays a routine, planned task.
DEFAULT_EXPIRY = timedelta(days=90)
#: No token lives longer: one that never expires is one nobody remembers to rotate.
MAX_EXPIRY = timedelta(days=365)
#: How long a rotated token keeps working, long enough to roll the new one out.
DEFAULT_GRACE = timedelta(hours=1)
MAX_GRACE = timedelta(days=30)
#: ``last_used_at`` is written at most this often per token: a write per call would
#: cost more than the lookup it follows.
LAST_USED_GRANULARITY = timedelta(minutes=5)

ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"

#: Values of ``source``.
CREATED = "created"
IMPORTED = "imported"

_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_TOKEN_ID = re.compile(r"tok_[a-z2-7]{26}")
_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def token_hash(token: str) -> str:
    """``sha256:<hex>`` of the token's UTF-8 bytes: what the database keeps.

    Unsalted on purpose: a token holds 256 random bits, so there is nothing to guess,
    and an unsalted hash can be looked up by index.
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_token_id(value: str) -> bool:
    return bool(_TOKEN_ID.fullmatch(value))


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s``: one positive number and one unit."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("a duration is a positive number and a unit: s, m, h, d or w (90d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def read_tokens_file(path: Path) -> dict[str, str]:
    """A pre-0007 tokens file, ``[tokens] caller = ["sha256:<hex>", ...]``: hash -> caller.

    A missing file is empty. Raises OSError when it cannot be read, ValueError when it
    is not valid TOML (``TOMLDecodeError``) or not of that shape.
    """
    if not path.exists():
        return {}
    data: dict[str, Any] = tomllib.loads(path.read_text())
    table = data.get("tokens", {})
    if not isinstance(table, dict):
        raise ValueError("the tokens file needs a [tokens] table")
    by_hash: dict[str, str] = {}
    for caller, hashes in table.items():
        values = hashes if isinstance(hashes, list) else [hashes]
        if not CALLER_NAME.fullmatch(caller) or not all(
            isinstance(v, str) and _HASH.fullmatch(v) for v in values
        ):
            raise ValueError('the tokens file maps caller names to ["sha256:<hex>", ...]')
        for value in values:
            by_hash[value] = caller
    return by_hash


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as stored, without its hash: what may be shown and logged."""

    token_id: str
    caller: str
    created_at: datetime
    #: None only for a hash imported from a tokens file.
    expires_at: datetime | None
    revoked_at: datetime | None = None
    replaced_by: str | None = None
    last_used_at: datetime | None = None
    source: str = CREATED

    def status(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``active``. A revocation counts whatever its time
        says: a clock behind the one that revoked must not revive the token."""
        if self.revoked_at is not None:
            return REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return EXPIRED
        return ACTIVE


def _info(stored: StoredToken) -> TokenInfo:
    return TokenInfo(
        stored.token_id,
        stored.caller,
        stored.created_at,
        stored.expires_at,
        stored.revoked_at,
        stored.replaced_by,
        stored.last_used_at,
        stored.source,
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: ``token`` is the secret, to be shown once and never stored."""

    token: str = field(repr=False)
    info: TokenInfo


@dataclass(frozen=True, slots=True)
class Rotation:
    issued: IssuedToken
    #: The tokens it replaces, as they now stand (expiring after the grace period, or
    #: revoked).
    replaced: tuple[TokenInfo, ...]


def _check_expiry(expires_in: timedelta) -> None:
    if not timedelta(0) < expires_in <= MAX_EXPIRY:
        raise InvalidArgument("expires_in", f"a token expires within {MAX_EXPIRY.days} days")


def _event(action: str, caller: str, *token_ids: str) -> AuditEvent:
    return AuditEvent(caller=caller, action=action, fields=token_ids, outcome="STARTED")


class TokenRegistry:
    """The ``bearer_tokens`` table: lookup on every call, and the lifecycle commands.

    Args:
        table: the ``bearer_tokens`` table, in the data database shared by every replica.
        audit: where lifecycle changes are recorded (an append needs no KMS).
        clock: decides expiry and stamps every change.
        random_bytes: the source of tokens and token ids.
    """

    def __init__(
        self,
        table: BearerTokenRepository,
        audit: AuditLog,
        clock: Clock = utc_now,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.table = table
        self.audit = audit
        self.clock = clock
        self._random_bytes = random_bytes

    # --- on every call ----------------------------------------------------------------

    def find(self, digest: str) -> TokenInfo | None:
        """The token whose hash is ``digest``, whatever its status; None if unknown.

        Raises:
            Unavailable: the database could not be reached.
        """
        found = self.table.token_by_hash(digest)
        return None if found is None else _info(found)

    def note_use(self, token: TokenInfo, now: datetime) -> None:
        """Stamp ``last_used_at``, at most every LAST_USED_GRANULARITY. Best effort: a
        failed stamp is logged and never fails the call it follows."""
        if token.last_used_at is not None and now - token.last_used_at < LAST_USED_GRANULARITY:
            return
        try:
            self.table.note_token_use(token.token_id, now, now - LAST_USED_GRANULARITY)
        except OubliError as e:
            log.warning("token_last_used_not_saved", token_id=token.token_id, reason=e.reason)

    # --- lifecycle ----------------------------------------------------------------------

    def create(self, caller: str, expires_in: timedelta = DEFAULT_EXPIRY) -> IssuedToken:
        """Make a token for ``caller``; only its hash is stored.

        Raises:
            InvalidArgument: a malformed caller name, or ``expires_in`` outside
                (0, MAX_EXPIRY].
            Unavailable: the database (or the audit trail in it) could not be written.
        """
        if not CALLER_NAME.fullmatch(caller):
            raise InvalidArgument("caller", "caller names match [a-z][a-z0-9-]{0,63}")
        _check_expiry(expires_in)
        token, new = self._new_token(caller, expires_in, self.clock())
        with self._recorded([_event("token.create", caller, new.token_id)]):
            self.table.insert_token(new, token_hash(token))
        return IssuedToken(token, self.get(new.token_id))

    def tokens(self, caller: str | None = None) -> list[TokenInfo]:
        """Every token (of ``caller``), by caller, then oldest first."""
        return [_info(stored) for stored in self.table.tokens(caller)]

    def get(self, token_id: str) -> TokenInfo:
        """Raises TokenNotFound."""
        if not is_token_id(token_id):
            raise TokenNotFound("no such token: ids look like tok_ and 26 characters [a-z2-7]")
        found = self.table.token(token_id)
        if found is None:
            raise TokenNotFound("no such token", token_id=token_id)
        return _info(found)

    def revoke(self, token_id: str) -> tuple[TokenInfo, bool]:
        """Revoke a token now, on every replica; (the token, whether this call revoked
        it). Revoking a revoked token changes nothing and records nothing.

        Raises:
            TokenNotFound: no such token.
            Unavailable: the database could not be written.
        """
        found = self.get(token_id)
        if found.revoked_at is not None:
            return found, False
        with self._recorded([_event("token.revoke", found.caller, token_id)]):
            changed = self.table.revoke_token(token_id, self.clock())
        return self.get(token_id), changed

    def rotate(
        self,
        target: str,
        *,
        grace: timedelta | None = DEFAULT_GRACE,
        expires_in: timedelta = DEFAULT_EXPIRY,
    ) -> Rotation:
        """Replace the active tokens of a caller (``target`` a caller name), or one
        token (``target`` a token id), by one new token.

        The replaced tokens keep working for ``grace`` (their expiry is brought forward
        to now + grace, never pushed back), or stop at once (``grace`` None: revoked).

        Raises:
            TokenNotFound: ``target`` is a token id that does not exist.
            FailedPrecondition: TOKEN_NOT_ACTIVE, nothing active to replace.
            InvalidArgument: a malformed caller, ``grace`` outside (0, MAX_GRACE] or
                ``expires_in`` outside (0, MAX_EXPIRY].
            Unavailable: the database could not be written.
        """
        if grace is not None and not timedelta(0) < grace <= MAX_GRACE:
            raise InvalidArgument("grace", f"the grace period is within {MAX_GRACE.days} days")
        _check_expiry(expires_in)
        now = self.clock()
        if is_token_id(target):
            caller = self.get(target).caller
            replaced = self.table.active_token_ids(now, token_id=target)
        elif CALLER_NAME.fullmatch(target):
            caller = target
            replaced = self.table.active_token_ids(now, caller=target)
        else:
            raise InvalidArgument("target", "rotate a caller name or a token id (tok_...)")
        if not replaced:
            raise FailedPrecondition(
                "TOKEN_NOT_ACTIVE", "no active token to rotate (make one with token create)"
            )
        token, new = self._new_token(caller, expires_in, now)
        events = [_event("token.create", caller, new.token_id)]
        events += [_event("token.rotate", caller, old, new.token_id) for old in replaced]
        with self._recorded(events):
            # Only what is still active when the new token is written is replaced.
            self.table.replace_tokens(
                new, token_hash(token), replaced, now, None if grace is None else now + grace
            )
        return Rotation(
            IssuedToken(token, self.get(new.token_id)),
            tuple(self.get(old) for old in replaced),
        )

    def import_file(self, path: Path) -> int:
        """Import the hashes of a pre-0007 tokens file that the table does not hold
        yet, as tokens without expiry; returns how many. Safe to run on every start,
        from every replica: a hash already imported (and maybe revoked) stays as it is.

        Raises:
            OSError, ValueError: the file cannot be read or is malformed (see
                :func:`read_tokens_file`).
            Unavailable: the database could not be written.
        """
        by_hash = read_tokens_file(path)
        if not by_hash:
            return 0
        known = self.table.known_hashes(list(by_hash))
        now = self.clock()
        fresh = [
            (self._new_id(), caller, digest)
            for digest, caller in sorted(by_hash.items())
            if digest not in known
        ]
        imported = 0
        if not fresh:
            log.info("tokens_file_imported", imported=0, already_known=len(known))
            return 0
        events = [_event("token.import", caller, token_id) for token_id, caller, _ in fresh]
        with self._recorded(events):
            for token_id, caller, digest in fresh:
                row = StoredToken(token_id, caller, now, None, None, None, None, IMPORTED)
                try:
                    self.table.insert_token(row, digest)
                    imported += 1
                except AlreadyExists:  # another replica imported it meanwhile
                    continue
        log.info("tokens_file_imported", imported=imported, already_known=len(known))
        return imported

    # --- helpers ------------------------------------------------------------------------

    def _new_id(self) -> str:
        return TOKEN_ID_PREFIX + new_id(self._random_bytes)

    def _new_token(
        self, caller: str, expires_in: timedelta, now: datetime
    ) -> tuple[str, StoredToken]:
        """A new secret, and its row (without the hash)."""
        secret = base64.urlsafe_b64encode(self._random_bytes(32)).rstrip(b"=").decode("ascii")
        new = StoredToken(self._new_id(), caller, now, now + expires_in, None, None, None, CREATED)
        return TOKEN_PREFIX + secret, new

    @contextmanager
    def _recorded(self, events: Sequence[AuditEvent]) -> Iterator[None]:
        """Audit a change as the server audits an RPC that changes something: STARTED
        first (if it cannot be written, nothing is changed), then the outcome (best
        effort: the change is made by then; a failure is logged)."""
        self.audit.append_many(events)
        try:
            yield
        except OubliError as e:
            self._outcome(events, e.reason)
            raise
        self._outcome(events, "OK")

    def _outcome(self, events: Sequence[AuditEvent], outcome: str) -> None:
        try:
            self.audit.append_many([replace(e, outcome=outcome) for e in events])
        except OubliError:
            log.error("audit_append_failed", outcome=outcome, action=events[0].action)
