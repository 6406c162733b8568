"""Unary put and get through a real oubli server, 1 KiB records, against the ceiling
(bare gRPC echo of the same message size) and the naive alternative (one Vault
Transit call per record: encrypt for puts, decrypt for gets)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import grpc
import hvac
import pytest

from benchmarks.helpers import CATEGORY, FIELD, MESSAGE, ORIGIN, PURPOSE, client_for
from oubli_client import OubliClient
from oubli_client.v1 import vault_pb2 as pb
from tests.integration.processes import ServerProcess
from vault.app.openbao_process import OpenBaoDevServer

NAIVE_MOUNT, NAIVE_KEY = "naive", "naive-subject"


@pytest.fixture(scope="module")
def client(oubli_server: ServerProcess) -> Iterator[OubliClient]:
    with client_for(oubli_server) as c:
        yield c


@pytest.fixture(scope="module")
def subject_id(client: OubliClient) -> str:
    return client.create_subject().subject_id


@pytest.fixture(scope="module")
def naive_vault(bench_openbao: OpenBaoDevServer) -> Iterator[hvac.Client]:
    """What a user would build without oubli: one Transit key, one call per record."""
    vault = hvac.Client(url=bench_openbao.address, token=bench_openbao.token)
    if f"{NAIVE_MOUNT}/" not in vault.sys.list_mounted_secrets_engines()["data"]:
        vault.sys.enable_secrets_engine("transit", path=NAIVE_MOUNT)
    vault.secrets.transit.create_key(NAIVE_KEY, mount_point=NAIVE_MOUNT)
    yield vault
    vault.adapter.close()


def test_ceiling_echo_unary(benchmark, echo_target: str) -> None:  # type: ignore[no-untyped-def]
    """The ceiling: a bare gRPC echo of a CreateRecord request's bytes (ids as long as
    real ones), one call per record."""
    payload = pb.CreateRecordRequest(
        subject_id="0" * 26, category=CATEGORY, fields={FIELD: MESSAGE}, origin=ORIGIN
    ).SerializeToString()
    with grpc.insecure_channel(echo_target) as channel:
        echo = channel.unary_unary("/bench.Echo/Echo")
        benchmark.extra_info["items"] = 1
        assert benchmark(lambda: echo(payload, timeout=10)) == payload


def test_naive_vault_encrypt_per_record(benchmark, naive_vault: hvac.Client) -> None:  # type: ignore[no-untyped-def]
    """The naive put: one Transit encrypt call per record."""
    plaintext = base64.b64encode(MESSAGE.encode()).decode()
    benchmark.extra_info.update(items=1, baseline="naive_encrypt")
    result = benchmark(
        lambda: naive_vault.secrets.transit.encrypt_data(
            NAIVE_KEY, plaintext, mount_point=NAIVE_MOUNT
        )
    )
    assert result["data"]["ciphertext"].startswith("vault:v1:")


def test_naive_vault_decrypt_per_record(benchmark, naive_vault: hvac.Client) -> None:  # type: ignore[no-untyped-def]
    """The naive get: one Transit decrypt call per record."""
    plaintext = base64.b64encode(MESSAGE.encode()).decode()
    ciphertext = naive_vault.secrets.transit.encrypt_data(
        NAIVE_KEY, plaintext, mount_point=NAIVE_MOUNT
    )["data"]["ciphertext"]
    benchmark.extra_info.update(items=1, baseline="naive_decrypt")
    result = benchmark(
        lambda: naive_vault.secrets.transit.decrypt_data(
            NAIVE_KEY, ciphertext, mount_point=NAIVE_MOUNT
        )
    )
    assert result["data"]["plaintext"] == plaintext


def test_oubli_unary_put(benchmark, client: OubliClient, subject_id: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.extra_info.update(items=1, baseline="naive_encrypt")
    record = benchmark(lambda: client.create_record(subject_id, CATEGORY, {FIELD: MESSAGE}, ORIGIN))
    assert record.version == 1
    assert client.get_record(subject_id, record.record_id, PURPOSE).fields == {FIELD: MESSAGE}


def test_oubli_unary_get(benchmark, client: OubliClient, subject_id: str) -> None:  # type: ignore[no-untyped-def]
    fields = {FIELD: MESSAGE[:-16] + os.urandom(8).hex()}
    record = client.create_record(subject_id, CATEGORY, fields, ORIGIN)
    benchmark.extra_info.update(items=1, baseline="naive_decrypt")
    got = benchmark(lambda: client.get_record(subject_id, record.record_id, PURPOSE))
    assert got.fields == fields == record.fields
