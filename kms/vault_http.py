"""hvac's requests over one urllib3 pool instead of a ``requests.Session``.

Each Transit call is small (an unwrap sends one ciphertext, gets 32 bytes back), so the
HTTP client's own Python dominates the client side: through ``requests`` a call spent
~546 µs of CPU in oubli, through urllib3 directly (which ``requests`` drives anyway)
~233 µs — a cold batch get makes one unwrap per subject, and the server's CPU is what
it shares with OpenBao on small machines.

:class:`PooledSession` is the part of ``requests.Session`` hvac's adapters use
(``request(method, url, headers=..., json=..., params=..., timeout=...)`` and the
``verify``/``cert``/``proxies`` attributes), returning responses with the attributes
hvac reads (``status_code``, ``ok``, ``headers``, ``text``, ``json()``). urllib3's
errors are raised as the ``requests`` exceptions they would have been
(``ConnectionError``, ``Timeout``, ``SSLError``, ``TooManyRedirects``), so the KMS
seam translates them as before (kms/vault_transit.py).

TLS keeps ``requests``' choices: a CA bundle given (``VaultTls.ca_cert``), else
``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's bundle; the client
certificate for mTLS. A proxy from the environment (``HTTPS_PROXY`` and friends,
``NO_PROXY`` honoured) is ``requests``' business: :func:`vault_session` then returns
None and hvac keeps its ``requests.Session``.
"""

from __future__ import annotations

import json as jsonlib
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import requests
import requests.exceptions
import requests.utils
import urllib3
import urllib3.exceptions

#: Connections kept per host: the unwraps of a batch go 8 keys at a time, a few batches
#: side by side.
POOL_CONNECTIONS = 32
#: Redirects followed (``requests``' limit): a standby node answers 307 to the active one.
MAX_REDIRECTS = 30


class PooledResponse:
    """What hvac reads of a ``requests.Response``."""

    __slots__ = ("content", "headers", "status_code", "url")

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes, url: str) -> None:
        self.status_code = status
        self.headers = headers
        self.content = content
        self.url = url

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class PooledSession:
    """hvac's ``session``: requests over one urllib3 ``PoolManager``, no proxy."""

    proxies: dict[str, str] = {}

    def __init__(self, verify: bool | str, cert: tuple[str, str] | None) -> None:
        self.verify = verify
        self.cert = cert
        tls: dict[str, Any] = {}
        if verify is False:
            tls["cert_reqs"] = "CERT_NONE"
        else:
            tls["cert_reqs"] = "CERT_REQUIRED"
            bundle = verify if isinstance(verify, str) else _default_ca_bundle()
            tls["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
        if cert is not None:
            tls["cert_file"], tls["key_file"] = cert
        self._pool = urllib3.PoolManager(maxsize=POOL_CONNECTIONS, block=False, **tls)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        allow_redirects: bool = True,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **_settings: Any,  # cert, verify, proxies: fixed when the pool was made
    ) -> PooledResponse:
        sent = dict(headers or {})
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            sent["Content-Type"] = "application/json"
        if params:
            url = f"{url}?{urlencode(params, doseq=True)}"
        retries = urllib3.Retry(
            total=None,
            connect=0,
            read=0,
            status=0,
            other=0,
            redirect=MAX_REDIRECTS if allow_redirects else 0,
            raise_on_redirect=allow_redirects,
        )
        try:
            answer = self._pool.request(
                method.upper(),
                url,
                body=body,
                headers=sent,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=retries,
                redirect=allow_redirects,
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as e:
            raise _as_requests_error(e) from e
        return PooledResponse(answer.status, answer.headers, answer.data, url)

    def close(self) -> None:
        self._pool.clear()


def _default_ca_bundle() -> str:
    """``requests``' CA bundle for ``verify=True``: the environment's, else certifi's."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or requests.utils.DEFAULT_CA_BUNDLE_PATH
    )


def _as_requests_error(error: urllib3.exceptions.HTTPError) -> requests.exceptions.RequestException:
    """The ``requests`` exception ``requests`` raises for this urllib3 error (the class
    only: no URL or body in the text)."""
    reason: BaseException = error
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        if isinstance(error.reason, urllib3.exceptions.ResponseError):
            return requests.exceptions.TooManyRedirects("too many redirects from Vault")
        reason = error.reason or error
    name = type(reason).__name__
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return requests.exceptions.ConnectTimeout(f"connecting to Vault timed out: {name}")
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return requests.exceptions.ReadTimeout(f"Vault did not answer in time: {name}")
    if isinstance(reason, urllib3.exceptions.SSLError):
        return requests.exceptions.SSLError(f"TLS with Vault failed: {name}")
    return requests.exceptions.ConnectionError(f"Vault unreachable: {name}")


def vault_session(url: str, verify: bool | str, cert: tuple[str, str] | None) -> Any:
    """A :class:`PooledSession` for Vault at ``url``, or None when the environment
    names a proxy for it (hvac then makes its ``requests.Session``, which honours it)."""
    if requests.utils.get_environ_proxies(url):
        return None
    return PooledSession(verify, cert)
