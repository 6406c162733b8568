"""OpenBao Transit specifics, checked against the real server with hvac directly."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator

import hvac
import hvac.exceptions
import pytest

from kms.base import KeyDestroyed, KmsError, KmsUnavailable
from kms.vault_transit import VaultTransitKeyManager
from vault.app.openbao_process import OpenBaoDevServer, free_port

pytestmark = pytest.mark.openbao


def new_key_id() -> str:
    return "k" + secrets.token_hex(12)


@pytest.fixture
def bao(openbao: OpenBaoDevServer) -> Iterator[hvac.Client]:
    client = hvac.Client(url=openbao.address, token=openbao.token)
    yield client
    client.adapter.close()


def read_key(bao: hvac.Client, kms: VaultTransitKeyManager, key_id: str) -> dict[str, object]:
    answer = bao.secrets.transit.read_key(key_id, mount_point=kms.mount_point)
    data: dict[str, object] = answer["data"]
    return data


def test_created_key_has_the_safe_settings(
    vault_kms: VaultTransitKeyManager, bao: hvac.Client
) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)

    key = read_key(bao, vault_kms, key_id)

    assert key["type"] == "aes256-gcm96"
    assert key["exportable"] is False
    assert key["allow_plaintext_backup"] is False
    assert key["deletion_allowed"] is True
    assert key["name"] == key_id


def test_mount_disables_upsert(vault_kms: VaultTransitKeyManager, bao: hvac.Client) -> None:
    config = bao.read(f"{vault_kms.mount_point}/config/keys")
    assert config["data"]["disable_upsert"] is True


def test_encrypt_to_a_missing_key_does_not_create_it(
    vault_kms: VaultTransitKeyManager, bao: hvac.Client
) -> None:
    key_id = new_key_id()
    with pytest.raises(hvac.exceptions.VaultError):
        bao.secrets.transit.encrypt_data(
            key_id, base64.b64encode(b"hello").decode(), mount_point=vault_kms.mount_point
        )
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.secrets.transit.read_key(key_id, mount_point=vault_kms.mount_point)
    assert vault_kms.key_exists(key_id) is False


def test_encrypt_after_erasure_does_not_resurrect_the_key(
    vault_kms: VaultTransitKeyManager, bao: hvac.Client
) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)
    vault_kms.destroy_key(key_id)

    with pytest.raises(hvac.exceptions.VaultError):
        bao.secrets.transit.encrypt_data(
            key_id, base64.b64encode(b"hello").decode(), mount_point=vault_kms.mount_point
        )
    with pytest.raises(KeyDestroyed):
        vault_kms.generate_data_key(key_id)

    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.secrets.transit.read_key(key_id, mount_point=vault_kms.mount_point)
    assert vault_kms.key_exists(key_id) is False


def test_destroy_removes_the_transit_key(
    vault_kms: VaultTransitKeyManager, bao: hvac.Client
) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)
    assert read_key(bao, vault_kms, key_id)["name"] == key_id

    vault_kms.destroy_key(key_id)

    # A read of a missing Transit key answers 404, which hvac maps to InvalidPath.
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.secrets.transit.read_key(key_id, mount_point=vault_kms.mount_point)
    answer = bao.adapter.get(f"/v1/{vault_kms.mount_point}/keys/{key_id}", raise_exception=False)
    assert answer.status_code == 404
    assert vault_kms.key_exists(key_id) is False


def test_destroy_a_key_whose_deletion_was_never_allowed(
    vault_kms: VaultTransitKeyManager, bao: hvac.Client
) -> None:
    # As if a crash had come between create and /config: deletion_allowed is False.
    key_id = new_key_id()
    bao.secrets.transit.create_key(
        key_id, key_type="aes256-gcm96", mount_point=vault_kms.mount_point
    )
    assert read_key(bao, vault_kms, key_id)["deletion_allowed"] is False

    vault_kms.destroy_key(key_id)

    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.secrets.transit.read_key(key_id, mount_point=vault_kms.mount_point)
    assert vault_kms.key_exists(key_id) is False


def test_create_existing_key_leaves_it_untouched(
    vault_kms: VaultTransitKeyManager, bao: hvac.Client
) -> None:
    key_id = new_key_id()
    bao.secrets.transit.create_key(
        key_id, key_type="aes256-gcm96", mount_point=vault_kms.mount_point
    )

    with pytest.raises(KmsError) as caught:
        vault_kms.create_key(key_id)

    assert not isinstance(caught.value, KmsUnavailable)
    assert caught.value.key_id == key_id


def test_data_key_is_a_transit_ciphertext(vault_kms: VaultTransitKeyManager) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)
    data_key = vault_kms.generate_data_key(key_id)
    assert data_key.wrapped.startswith(b"vault:v1:")
    assert data_key.key_version == 1
    assert base64.b64encode(data_key.plaintext) not in data_key.wrapped


def test_key_version_follows_rotation(vault_kms: VaultTransitKeyManager, bao: hvac.Client) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)
    old = vault_kms.generate_data_key(key_id)
    bao.secrets.transit.rotate_key(key_id, mount_point=vault_kms.mount_point)

    new = vault_kms.generate_data_key(key_id)

    assert new.key_version == 2
    assert new.wrapped.startswith(b"vault:v2:")
    assert vault_kms.unwrap(key_id, old.wrapped) == old.plaintext
    assert vault_kms.unwrap(key_id, new.wrapped) == new.plaintext


@pytest.mark.parametrize(
    "wrapped",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not-a-ciphertext", id="no-prefix"),
        pytest.param(b"vault:vX:AAAA", id="bad-version"),
        pytest.param(b"vault:v1:\xff\xfe\x00", id="not-ascii"),
        pytest.param(b"vault:v1:!!!not base64!!!", id="not-base64"),
        pytest.param(b"vault:v1:" + base64.b64encode(b"short"), id="too-short"),
        pytest.param(b"vault:v9:" + base64.b64encode(bytes(60)), id="unknown-version"),
    ],
)
def test_unwrap_of_a_malformed_wrapped_key_fails(
    vault_kms: VaultTransitKeyManager, wrapped: bytes
) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)

    with pytest.raises(KmsError) as caught:
        vault_kms.unwrap(key_id, wrapped)

    # The key exists: a bad ciphertext must not read as a shredded subject.
    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)


def test_tampered_wrapped_key_fails(vault_kms: VaultTransitKeyManager) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)
    data_key = vault_kms.generate_data_key(key_id)
    prefix, _, body = data_key.wrapped.rpartition(b":")
    raw = bytearray(base64.b64decode(body))
    raw[len(raw) // 2] ^= 0x01
    tampered = prefix + b":" + base64.b64encode(bytes(raw))

    with pytest.raises(KmsError) as caught:
        vault_kms.unwrap(key_id, tampered)

    assert not isinstance(caught.value, KeyDestroyed | KmsUnavailable)


def test_ensure_mount_is_idempotent(vault_kms: VaultTransitKeyManager, bao: hvac.Client) -> None:
    key_id = new_key_id()
    vault_kms.create_key(key_id)

    vault_kms.ensure_mount(cache_size=500)

    assert vault_kms.key_exists(key_id)
    assert bao.read(f"{vault_kms.mount_point}/config/keys")["data"]["disable_upsert"] is True
    assert bao.read(f"{vault_kms.mount_point}/cache-config")["data"]["size"] == 500


def test_ensure_mount_creates_a_missing_mount(openbao: OpenBaoDevServer, bao: hvac.Client) -> None:
    mount = f"transit-{secrets.token_hex(4)}"
    kms = VaultTransitKeyManager(openbao.address, openbao.token, mount_point=mount)
    try:
        kms.ensure_mount()
        assert f"{mount}/" in bao.sys.list_mounted_secrets_engines()["data"]
        assert bao.read(f"{mount}/config/keys")["data"]["disable_upsert"] is True
    finally:
        kms.close()


def test_wrong_token_is_not_reported_as_destroyed(openbao: OpenBaoDevServer) -> None:
    kms = VaultTransitKeyManager(openbao.address, "not-the-token")
    try:
        with pytest.raises(KmsError) as caught:
            kms.generate_data_key(new_key_id())
        assert not isinstance(caught.value, KeyDestroyed)
        assert "not-the-token" not in str(caught.value)
    finally:
        kms.close()


# --- an unreachable KMS -----------------------------------------------------------


@pytest.fixture
def unreachable_kms() -> Iterator[VaultTransitKeyManager]:
    # Nothing listens on a port that was just free: connections are refused at once.
    kms = VaultTransitKeyManager(f"http://127.0.0.1:{free_port()}", "token", timeout=2.0)
    yield kms
    kms.close()


UNREACHABLE_OPERATIONS: list[tuple[str, Callable[[VaultTransitKeyManager, str], object]]] = [
    ("create_key", lambda kms, key_id: kms.create_key(key_id)),
    ("generate_data_key", lambda kms, key_id: kms.generate_data_key(key_id)),
    ("unwrap", lambda kms, key_id: kms.unwrap(key_id, b"vault:v1:AAAA")),
    ("unwrap_many", lambda kms, key_id: kms.unwrap_many([(key_id, b"vault:v1:AAAA")])),
    ("destroy_key", lambda kms, key_id: kms.destroy_key(key_id)),
    ("key_exists", lambda kms, key_id: kms.key_exists(key_id)),
    ("sign_many", lambda kms, key_id: kms.sign_many(key_id, [b"head"])),
    ("ensure_mount", lambda kms, key_id: kms.ensure_mount()),
]


@pytest.mark.parametrize(
    ("name", "operation"), UNREACHABLE_OPERATIONS, ids=[n for n, _ in UNREACHABLE_OPERATIONS]
)
def test_unreachable_kms_raises_unavailable(
    unreachable_kms: VaultTransitKeyManager,
    name: str,
    operation: Callable[[VaultTransitKeyManager, str], object],
) -> None:
    with pytest.raises(KmsUnavailable):
        operation(unreachable_kms, new_key_id())
    assert unreachable_kms.calls >= 1, name


# --- batch sign: what Transit may answer --------------------------------------------


@pytest.mark.parametrize(
    "batch_results",
    [
        pytest.param([{"signature": "vault:v1:AAAA"}, {"error": "refused"}], id="item-error"),
        pytest.param([{"signature": "vault:v1:AAAA"}], id="one-result-short"),
        pytest.param([{"signature": "vault:v1:AAAA"}] * 3, id="one-result-over"),
    ],
)
def test_sign_many_refuses_an_answer_that_does_not_sign_every_item(
    unreachable_kms: VaultTransitKeyManager, batch_results: list[dict[str, str]]
) -> None:
    def answer(*args: object, **kwargs: object) -> dict[str, object]:
        return {"data": {"batch_results": batch_results}}

    unreachable_kms._transit.sign_data = answer  # type: ignore[method-assign]
    with pytest.raises(KmsError) as caught:
        unreachable_kms.sign_many("signing", [b"one", b"two"])
    assert not isinstance(caught.value, KmsUnavailable | KeyDestroyed)
    assert caught.value.key_id == "signing"
    assert unreachable_kms.calls == 1
