"""oubli_client.channel: credentials are checked before anything is sent."""

from __future__ import annotations

import grpc
import pytest

from oubli_client import OubliClient
from oubli_client.channel import bearer_metadata, open_channel


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_cert": b"cert"},  # no key
        {"client_key": b"key"},  # no certificate
        {"client_cert": b"cert", "client_key": b"key"},  # mTLS without TLS
    ],
)
def test_half_an_mtls_setup_is_refused(kwargs: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="mTLS"):
        open_channel("127.0.0.1:1", **kwargs)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak"])
def test_a_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        bearer_metadata(token)
    with pytest.raises(ValueError, match="token"):
        OubliClient("127.0.0.1:1", token=token)


def test_the_token_travels_as_a_bearer_header() -> None:
    assert bearer_metadata("oubli_abc") == (("authorization", "Bearer oubli_abc"),)
    assert bearer_metadata(None) == ()


def test_every_call_has_a_deadline() -> None:
    with pytest.raises(ValueError, match="deadline"):
        OubliClient("127.0.0.1:1", timeout=0)


def test_tls_settings_beside_a_channel_of_ones_own_are_refused() -> None:
    """They would be ignored silently: the caller's channel has its own credentials."""
    with grpc.insecure_channel("127.0.0.1:1") as channel, pytest.raises(ValueError, match="TLS"):
        OubliClient("127.0.0.1:1", channel=channel, root_certificates=b"ca")
