"""The connection to an oubli server: plaintext, TLS or mTLS, and the bearer token sent
with every call."""

from __future__ import annotations

import grpc

#: Exports of large subjects exceed gRPC's default 4 MiB receive limit.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


def open_channel(
    target: str,
    *,
    root_certificates: bytes | None = None,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
) -> grpc.Channel:
    """A channel to ``target`` ("host:port"). With ``root_certificates`` (the CA that
    signed the server's certificate) it speaks TLS; with ``client_cert`` and
    ``client_key`` too, mTLS, where the certificate names the caller."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("mTLS needs both client_cert and client_key")
    if client_cert is not None and root_certificates is None:
        raise ValueError("mTLS needs root_certificates: the CA of the server's certificate")
    options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
    if root_certificates is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
    return grpc.secure_channel(target, credentials, options=options)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (none without one)."""
    if token is None:
        return ()
    if not token or any(c.isspace() for c in token):
        raise ValueError("token must be a non-empty string without whitespace")
    return (("authorization", f"Bearer {token}"),)
