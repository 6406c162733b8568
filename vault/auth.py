"""Authentication: who is calling.

- **mTLS** (production): the client certificate, verified against the configured CA,
  names the caller in its common name.
- **Bearer tokens** (embedded default): ``authorization: Bearer <token>``; the server
  keeps only SHA-256 hashes of tokens (``tokens.toml``), so a copy of its files does
  not let anyone call it.

No credentials, or unknown ones, is UNAUTHENTICATED. What a caller may then do is
vault.callers' business.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vault.callers import CALLER_NAME
from vault.errors import OubliError
from vault.private_files import make_private_dir


class Unauthenticated(OubliError):
    reason = "UNAUTHENTICATED"


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    #: "mtls" or "token"
    method: str


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """``[tokens]`` caller = ["sha256:<hex>", ...] — several per caller for rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        """hash -> caller"""
        if not self.path.exists():
            return {}
        data: dict[str, Any] = tomllib.loads(self.path.read_text())
        table = data.get("tokens", {})
        if not isinstance(table, dict):
            raise ValueError("the tokens file needs a [tokens] table")
        by_hash: dict[str, str] = {}
        for caller, hashes in table.items():
            for value in hashes if isinstance(hashes, list) else [hashes]:
                by_hash[str(value)] = caller
        return by_hash

    def create(self, caller: str) -> str:
        """Make a new token for ``caller``; only its hash is stored. Returns the token."""
        if not CALLER_NAME.fullmatch(caller):
            raise ValueError("caller names match [a-z][a-z0-9-]{0,63}")
        token = f"oubli_{secrets.token_urlsafe(32)}"
        current: dict[str, list[str]] = {}
        for value, name in self.load().items():
            current.setdefault(name, []).append(value)
        current.setdefault(caller, []).append(token_hash(token))
        lines = [
            "# Hashes of oubli bearer tokens (oubli token create CALLER). No secrets here.",
            "[tokens]",
        ]
        for name in sorted(current):
            quoted = ", ".join(f'"{h}"' for h in sorted(current[name]))
            lines.append(f'"{name}" = [{quoted}]')
        make_private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        tmp.replace(self.path)
        return token


class Authenticator:
    """``token_hashes``: hash -> caller. With ``store``, the tokens file is read again
    whenever it changes, so ``oubli token create`` (or removing a hash to revoke a
    token) takes effect without a restart."""

    def __init__(
        self,
        token_hashes: Mapping[str, str],
        *,
        mtls: bool = False,
        store: TokenStore | None = None,
    ) -> None:
        self._by_hash = dict(token_hashes)
        self._mtls = mtls
        self._store = store
        self._stamp = self._file_stamp()
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._store is None:
            return None
        try:
            stat = self._store.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp or self._store is None:
            return
        with self._lock:
            try:
                self._by_hash = self._store.load()
            except (OSError, ValueError):
                return  # half-written file: keep the tokens we have, try again next call
            self._stamp = stamp

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        self._refresh()
        if self._mtls:
            names: list[Any] = list(context.auth_context().get("x509_common_name") or [])
            if names and isinstance(names[0], bytes):
                name = names[0].decode("utf-8", errors="replace")
                if CALLER_NAME.fullmatch(name):
                    return Caller(name, "mtls")
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token:
                    caller = self._by_hash.get(token_hash(token.strip()))
                    if caller is not None:
                        return Caller(caller, "token")
        raise Unauthenticated("missing or unknown credentials")
