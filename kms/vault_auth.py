"""How oubli authenticates to Vault / OpenBao, and keeps its token alive.

A method (:class:`AuthMethod`) produces a Vault token through hvac's own auth methods:

* :class:`StaticToken` -- a token given in the configuration (``VAULT_TOKEN``);
* :class:`TokenFile` -- a file a Vault Agent / OpenBao Agent sink keeps up to date; read
  again whenever it changes (``stat``: inode, size, mtime; one syscall per Vault request);
* :class:`AppRole` -- role id and secret id read from files at each login, so a secret
  id rotated on disk is used by the next login;
* :class:`Kubernetes` -- a role and the pod's service-account JWT (read at each login:
  projected tokens rotate).

:class:`VaultAuth` owns the token's life. After a login it looks the token up
(``auth/token/lookup-self``: ttl, creation ttl, renewable). At 2/3 of the ttl it renews
it (``renew-self``); a renewal that returns less than the token's creation ttl means the
max ttl is near, and the next refresh logs in again instead. A renewal that fails does
too. A Vault request answered 403 makes it look the token up: a token still valid means
the policy refused (the 403 stands); an invalid one is replaced by a new login and the
request is sent once more.

Renewal runs in a background daemon thread (:meth:`VaultAuth.start`), and lazily before
any request that finds its token due. The thread is what keeps an idle server's token
alive: a static token that expires while nobody calls is gone for good, and a login on
the request path costs a round trip inside the caller's deadline. The lazy check is what
keeps the token right when the thread's timing slips (a suspended process): a token
past its expiry is never sent, a login happens first.

When no valid token can be had (secret id destroyed, token revoked, JWT refused, files
unreadable), every request raises :class:`AuthLost`, a :class:`~kms.base.KmsUnavailable`
("Vault authentication lost"): the service answers UNAVAILABLE and fails closed. The
next request after :data:`RETRY_SECONDS` tries to log in again, so the service recovers
by itself once the credentials are back.

No token, secret id or JWT ever appears in a message, an event or a ``repr``.
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from kms.base import KmsUnavailable
from kms.deadline import seconds_left

#: The service-account token Kubernetes mounts into every pod.
DEFAULT_K8S_JWT_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: A token is renewed (or replaced) when this share of its ttl has passed.
RENEW_FRACTION = 2 / 3
#: Least pause between two failed logins (and between two failed renewals).
RETRY_SECONDS = 1.0
#: Refreshes are never scheduled closer together than this.
MIN_REFRESH_SECONDS = 0.5
#: Longest the renewal thread sleeps before it looks at the token again.
IDLE_WAKE_SECONDS = 5.0

_TRANSIENT = (
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)

#: An event for the operator's log: a name and fields (never a credential).
EventSink = Callable[..., None]


class AuthLost(KmsUnavailable):
    """No valid Vault token can be had right now; ``reason`` says why (no secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__("Vault authentication lost")
        self.reason = reason


class CredentialsUnreadable(Exception):
    """A credential file is missing, unreadable or empty (the message names the file's
    role, never its content)."""


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise CredentialsUnreadable(f"{what} file unreadable") from None
    if not value:
        raise CredentialsUnreadable(f"{what} file empty")
    return value


class AuthMethod(abc.ABC):
    """One way to obtain a Vault token."""

    #: Name in configuration and events: token | token-file | approle | kubernetes.
    name: str = "abstract"
    #: oubli renews the token it holds (False: an agent beside oubli does).
    renews: bool = True
    #: A new login yields a new token (False: the same static token again).
    fresh_tokens: bool = True

    @abc.abstractmethod
    def login(self, client: hvac.Client) -> str:
        """A token, read or obtained anew (files are read again at every call).

        Raises:
            CredentialsUnreadable: a credential file cannot be read.
            hvac.exceptions.VaultError, requests exceptions: Vault refused or is down.
        """

    def changed(self) -> bool:
        """The source changed since the last login (a token file rewritten)."""
        return False


class StaticToken(AuthMethod):
    name = "token"
    fresh_tokens = False

    def __init__(self, token: str) -> None:
        self._token = token

    def login(self, client: hvac.Client) -> str:
        if not self._token:
            raise CredentialsUnreadable("no token configured")
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"


class TokenFile(AuthMethod):
    """A token file kept current by Vault Agent / OpenBao Agent (its ``file`` sink).

    The agent logs in and renews; oubli only reads. Each request costs one ``stat``;
    the file is read again when its inode, size, mtime or ctime changed (an agent
    writes a new file and renames it over the old one, or rewrites it in place).
    """

    name = "token-file"
    renews = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, ...] | None = None

    def _signature(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def login(self, client: hvac.Client) -> str:
        signature = self._signature()
        token = _read_secret(self.path, "token")
        self._seen = signature
        return token

    def changed(self) -> bool:
        return self._signature() != self._seen


class AppRole(AuthMethod):
    name = "approle"

    def __init__(self, role_id_file: Path, secret_id_file: Path, mount: str = "approle") -> None:
        self.role_id_file = role_id_file
        self.secret_id_file = secret_id_file
        self.mount = mount

    def login(self, client: hvac.Client) -> str:
        role_id = _read_secret(self.role_id_file, "role id")
        secret_id = _read_secret(self.secret_id_file, "secret id")
        answer = client.auth.approle.login(
            role_id, secret_id=secret_id, use_token=False, mount_point=self.mount
        )
        return str(answer["auth"]["client_token"])


class Kubernetes(AuthMethod):
    name = "kubernetes"

    def __init__(
        self, role: str, jwt_file: Path = DEFAULT_K8S_JWT_FILE, mount: str = "kubernetes"
    ) -> None:
        self.role = role
        self.jwt_file = jwt_file
        self.mount = mount

    def login(self, client: hvac.Client) -> str:
        jwt = _read_secret(self.jwt_file, "service-account JWT")
        answer = client.auth.kubernetes.login(
            self.role, jwt, use_token=False, mount_point=self.mount
        )
        return str(answer["auth"]["client_token"])


@dataclass(slots=True)
class _Token:
    """The token in use and its schedule (clock seconds; None: never)."""

    value: str = field(repr=False)
    expires_at: float | None
    refresh_at: float | None
    creation_ttl: int
    renewable: bool
    #: A renewal came back short: the max ttl is near, renewing is pointless.
    capped: bool = False


class VaultAuth:
    """The token every Vault request carries: logged in, renewed, replaced, or lost.

    ``bind`` gives it an hvac client of its own (same address, TLS and namespace as the
    Transit client) for logins, lookups and renewals; it is used under the lock only.
    ``on_event(name, **fields)`` receives operator events (never a credential).
    """

    def __init__(
        self,
        method: AuthMethod,
        *,
        clock: Callable[[], float] = time.monotonic,
        renew_fraction: float = RENEW_FRACTION,
        retry_seconds: float = RETRY_SECONDS,
        lock_timeout: float = 10.0,
        on_event: EventSink | None = None,
    ) -> None:
        self.method = method
        self._clock = clock
        self._fraction = renew_fraction
        self._retry = retry_seconds
        self._lock_timeout = lock_timeout
        self._on_event = on_event
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._next_login = float("-inf")
        self._lost_reason = ""
        self._client: hvac.Client | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Counters for tests and metrics: logins, renewals, failed logins.
        self.logins = 0
        self.renewals = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"VaultAuth(method={self.method.name})"

    def bind(self, client: hvac.Client) -> None:
        self._client = client

    # --- what a Vault request asks -------------------------------------------------

    def token(self) -> str:
        """The token to send now; logs in first when there is none (or it expired).

        Raises:
            AuthLost: no valid token can be had.
            KmsUnavailable: Vault could not be reached to log in.
        """
        current = self._token
        now = self._clock()
        if current is not None and self._usable(current, now):
            if self._due(current, now) and self._lock.acquire(blocking=False):
                try:
                    self._refresh(now)
                finally:
                    self._lock.release()
                current = self._token or current
            return current.value
        with self._locked():
            current = self._token
            now = self._clock()
            if current is None or not self._usable(current, now):
                current = self._login(now)
            return current.value

    def denied(self, used: str) -> bool:
        """A request sent with ``used`` was answered 403. True: send it once more (the
        token was invalid and is replaced); False: the token is valid, the policy refused.

        Raises:
            AuthLost: the token is invalid and no new one can be had.
            KmsUnavailable: Vault could not be reached to tell.
        """
        with self._locked():
            current = self._token
            if current is None or current.value != used:
                return True  # replaced meanwhile: the next try uses the new one
            if self._lookup(used) is not None:
                return False
            self._token = None
            self._emit("vault_token_invalid", method=self.method.name)
            self._next_login = float("-inf")
            fresh = self._login(self._clock())
            if fresh.value == used:  # the same dead token again (a stale agent sink)
                self._token = None
                raise self._lost("token refused")
            return True

    # --- the renewal thread ------------------------------------------------------

    def start(self) -> None:
        """Renew in a background daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="oubli-vault-auth", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._sleep_seconds()):
            try:
                self.refresh_if_due()
            except Exception as e:  # the thread must outlive any one failure
                self._emit("vault_auth_refresh_error", reason=type(e).__name__)

    def _sleep_seconds(self) -> float:
        current = self._token
        if current is None or current.refresh_at is None:
            return IDLE_WAKE_SECONDS
        return min(IDLE_WAKE_SECONDS, max(0.05, current.refresh_at - self._clock()))

    def refresh_if_due(self) -> None:
        """Renew or replace the token if its refresh time has come (the thread's step;
        tests call it with their own clock)."""
        with self._lock:
            current = self._token
            now = self._clock()
            if current is not None and self._usable(current, now) and self._due(current, now):
                self._refresh(now)

    # --- internals (called with the lock held) -----------------------------------------

    def _locked(self) -> _Held:
        left = seconds_left()
        timeout = self._lock_timeout if left is None else max(0.0, min(left, self._lock_timeout))
        if not self._lock.acquire(timeout=timeout):
            raise KmsUnavailable("Vault login still in progress")
        return _Held(self._lock)

    def _usable(self, current: _Token, now: float) -> bool:
        if current.expires_at is not None and now >= current.expires_at:
            return False
        return not self.method.changed()

    @staticmethod
    def _due(current: _Token, now: float) -> bool:
        return current.refresh_at is not None and now >= current.refresh_at

    def _auth_client(self) -> hvac.Client:
        if self._client is None:
            raise RuntimeError("VaultAuth is not bound to a client")
        return self._client

    def _lookup(self, token: str) -> dict[str, Any] | None:
        """The token's lookup data; None when Vault says the token is not valid."""
        client = self._auth_client()
        client.token = token
        try:
            answer = client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            return None
        except _TRANSIENT as e:
            raise KmsUnavailable(f"Vault unreachable: {type(e).__name__}") from e
        finally:
            client.token = ""
        data: dict[str, Any] = answer["data"]
        return data

    def _schedule(self, now: float, ttl: int) -> tuple[float | None, float | None]:
        """(expires_at, refresh_at) of a token with ``ttl`` seconds left (0: no expiry)."""
        if ttl <= 0:
            return None, None
        expires = now + ttl
        refresh = now + max(ttl * self._fraction, MIN_REFRESH_SECONDS)
        return expires, (refresh if refresh < expires else None)

    def _login(self, now: float) -> _Token:
        if now < self._next_login and not self.method.changed():
            raise AuthLost(self._lost_reason or "login failed")
        client = self._auth_client()
        client.token = ""
        try:
            value = self.method.login(client)
            data = self._lookup(value)
        except CredentialsUnreadable as e:
            raise self._lost(str(e)) from None
        except _TRANSIENT as e:
            self._failed(now, "Vault unreachable")
            raise KmsUnavailable(f"Vault unreachable: {type(e).__name__}") from e
        except KmsUnavailable:
            self._failed(now, "Vault unreachable")
            raise
        except hvac.exceptions.VaultError as e:
            raise self._lost(f"login refused: {type(e).__name__}") from None
        finally:
            client.token = ""
        if data is None:
            raise self._lost("token refused")
        ttl = int(data.get("ttl") or 0)
        expires, refresh = self._schedule(now, ttl)
        renewable = bool(data.get("renewable"))
        if not (self.method.renews and renewable) and not self.method.fresh_tokens:
            refresh = None  # nothing oubli could do before it expires
        if not self.method.renews:
            refresh = None  # the agent renews, and rewrites the file when it logs in again
        self._token = _Token(
            value,
            expires_at=expires,
            refresh_at=refresh,
            creation_ttl=int(data.get("creation_ttl") or ttl),
            renewable=renewable,
        )
        self.logins += 1
        self._next_login = float("-inf")
        if self._lost_reason:
            self._emit("vault_auth_restored", method=self.method.name)
            self._lost_reason = ""
        self._emit("vault_login", method=self.method.name, ttl=ttl, renewable=renewable)
        return self._token

    def _refresh(self, now: float) -> None:
        """The token is valid and due: renew it, or log in again. Never raises while the
        token is still valid (the next attempt is rescheduled)."""
        current = self._token
        assert current is not None
        if self.method.renews and current.renewable and not current.capped:
            client = self._auth_client()
            client.token = current.value
            try:
                answer = client.auth.token.renew_self()
                ttl = int(answer["auth"]["lease_duration"])
            except _TRANSIENT as e:
                self._retry_later(current, now, f"renewal failed: {type(e).__name__}")
                return
            except (hvac.exceptions.VaultError, KeyError, TypeError, ValueError) as e:
                self._emit("vault_token_renew_failed", reason=type(e).__name__)
            else:
                current.expires_at, current.refresh_at = self._schedule(now, ttl)
                current.capped = ttl < current.creation_ttl
                self.renewals += 1
                self._emit("vault_token_renewed", ttl=ttl, capped=current.capped)
                if current.capped and not self.method.fresh_tokens:
                    self._emit("vault_token_max_ttl", method=self.method.name, ttl=ttl)
                    current.refresh_at = None
                return
            finally:
                client.token = ""
        if not self.method.fresh_tokens:
            current.refresh_at = None  # a static token cannot be replaced: it will expire
            return
        try:
            self._login(now)
        except KmsUnavailable:
            self._token = current  # still valid: keep using it, try again soon
            self._retry_later(current, now, "login failed")

    def _retry_later(self, current: _Token, now: float, reason: str) -> None:
        self._emit("vault_token_refresh_deferred", reason=reason)
        retry = now + self._retry
        if current.expires_at is not None and retry >= current.expires_at:
            retry = current.expires_at
        current.refresh_at = retry

    def _failed(self, now: float, reason: str) -> None:
        self.failures += 1
        self._next_login = now + self._retry
        self._lost_reason = reason

    def _lost(self, reason: str) -> AuthLost:
        now = self._clock()
        first = not self._lost_reason
        self._failed(now, reason)
        self._token = None
        if first:
            self._emit("vault_auth_lost", method=self.method.name, reason=reason)
        return AuthLost(reason)

    def _emit(self, event: str, **fields: object) -> None:
        if self._on_event is not None:
            self._on_event(event, **fields)


class _Held:
    """Releases a lock acquired with a timeout at the end of a ``with`` block."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@dataclass(frozen=True, slots=True)
class VaultTls:
    """TLS towards Vault: a CA bundle to verify it with (None: the system's), and a
    client certificate and key when Vault requires mTLS."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @property
    def verify(self) -> str | bool:
        return str(self.ca_cert) if self.ca_cert is not None else True

    @property
    def cert(self) -> tuple[str, str] | None:
        if self.client_cert is None or self.client_key is None:
            return None
        return (str(self.client_cert), str(self.client_key))
