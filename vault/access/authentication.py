"""Authentication: who is calling.

- **mTLS** (production): the client certificate, verified against the configured CA,
  names the caller in its common name.
- **Bearer tokens** (embedded default): ``authorization: Bearer <token>``; the data
  database keeps only SHA-256 hashes of tokens, with their expiry and revocation
  (vault.access.tokens), so a copy of it does not let anyone call the server, and every
  replica sees a revocation from its next call.

No credentials, or unknown ones, is UNAUTHENTICATED. What a caller may then do is
vault.access.caller_policy' business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from vault.access.caller_policy import CALLER_NAME
from vault.access.tokens import ACTIVE, REVOKED, TokenInfo, TokenRegistry, token_hash
from vault.errors import TokenExpired, TokenRevoked, Unauthenticated

__all__ = ["Authenticator", "Caller", "token_hash"]

log = structlog.get_logger("oubli.auth")


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    #: "mtls" or "token"
    method: str


class Authenticator:
    """Who is calling, checked on every call.

    Args:
        token_hashes: fixed tokens, hash -> caller, that never expire (the test suite's
            and embedders'; a served configuration has none).
        mtls: take the caller from the client certificate's common name first.
        registry: the ``bearer_tokens`` table, read on every call (vault.access.tokens), so a
            token made, revoked or rotated on any machine counts from the next call.
    """

    def __init__(
        self,
        token_hashes: Mapping[str, str] | None = None,
        *,
        mtls: bool = False,
        registry: TokenRegistry | None = None,
    ) -> None:
        self._by_hash = dict(token_hashes or {})
        self._mtls = mtls
        self._registry = registry

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        """Raises:
        Unauthenticated: no credentials, or unknown ones; TokenExpired / TokenRevoked
            (reasons TOKEN_EXPIRED / TOKEN_REVOKED) for a token that was valid once.
        Unavailable: the token table could not be read.
        """
        if self._mtls:
            names: list[Any] = list(context.auth_context().get("x509_common_name") or [])
            if names and isinstance(names[0], bytes):
                name = names[0].decode("utf-8", errors="replace")
                if CALLER_NAME.fullmatch(name):
                    return Caller(name, "mtls")
        token = _bearer_token(context)
        if token is not None:
            digest = token_hash(token)
            fixed = self._by_hash.get(digest)
            if fixed is not None:
                return Caller(fixed, "token")
            if self._registry is not None:
                found = self._registry.find(digest)
                if found is not None:
                    return Caller(self._live(found), "token")
        raise Unauthenticated("missing or unknown credentials")

    def _live(self, token: TokenInfo) -> str:
        """The token's caller if it is active now. Only the holder of a token that was
        valid once can tell expired or revoked from unknown: guessing gets nothing."""
        assert self._registry is not None
        now = self._registry.clock()
        status = token.status(now)
        if status == ACTIVE:
            self._registry.note_use(token, now)
            return token.caller
        # A revoked token in use may be a stolen one: worth a line of its own.
        log.warning("token_refused", status=status, token_id=token.token_id, caller=token.caller)
        if status == REVOKED:
            raise TokenRevoked("the token was revoked", token_id=token.token_id)
        raise TokenExpired("the token has expired", token_id=token.token_id)


def _bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
