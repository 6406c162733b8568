"""Unary put and get through a real oubli server, 1 KiB records, against the ceiling
(bare gRPC echo of the same message size) and the naive alternative (one Vault
Transit encrypt call per record)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import grpc
import hvac
import pytest

from clients.oubli_client import OubliClient
from clients.oubli_v1 import vault_pb2 as pb
from kms.openbao_process import OpenBaoDevServer
from tests.integration.processes import ServerProcess

MESSAGE = "x" * 1000  # with names and ids the request is ~1 KiB


@pytest.fixture(scope="module")
def client(oubli_server: ServerProcess) -> Iterator[OubliClient]:
    with OubliClient(oubli_server.target, token=oubli_server.token) as c:
        yield c


@pytest.fixture(scope="module")
def subject_id(client: OubliClient) -> str:
    return client.create_subject().subject_id


def test_ceiling_echo_unary(benchmark, echo_target: str, subject_id: str) -> None:  # type: ignore[no-untyped-def]
    payload = pb.CreateRecordRequest(
        subject_id=subject_id, category="support", fields={"message": MESSAGE}, origin="bench"
    ).SerializeToString()
    with grpc.insecure_channel(echo_target) as channel:
        echo = channel.unary_unary("/bench.Echo/Echo")
        assert benchmark(lambda: echo(payload, timeout=10)) == payload


def test_naive_vault_encrypt_per_record(benchmark, bench_openbao: OpenBaoDevServer) -> None:  # type: ignore[no-untyped-def]
    """What a user would build without oubli: one Transit call per record."""
    vault = hvac.Client(url=bench_openbao.address, token=bench_openbao.token)
    if "naive/" not in vault.sys.list_mounted_secrets_engines()["data"]:
        vault.sys.enable_secrets_engine("transit", path="naive")
    vault.secrets.transit.create_key("naive-subject", mount_point="naive")
    plaintext = base64.b64encode(MESSAGE.encode()).decode()
    result = benchmark(
        lambda: vault.secrets.transit.encrypt_data("naive-subject", plaintext, mount_point="naive")
    )
    assert result["data"]["ciphertext"].startswith("vault:v1:")


def test_oubli_unary_put(benchmark, client: OubliClient, subject_id: str) -> None:  # type: ignore[no-untyped-def]
    record = benchmark(
        lambda: client.create_record(subject_id, "support", {"message": MESSAGE}, "bench")
    )
    assert record.version == 1


def test_oubli_unary_get(benchmark, client: OubliClient, subject_id: str) -> None:  # type: ignore[no-untyped-def]
    record = client.create_record(subject_id, "support", {"message": os.urandom(8).hex()}, "b")
    got = benchmark(lambda: client.get_record(subject_id, record.record_id, "support"))
    assert got.fields == record.fields
