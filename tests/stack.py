"""A real gRPC server (in process) and the Python client, on each storage/KMS stack.

The ``stack`` fixture is registered in tests/conftest.py.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from kms.base import KeyManager
from kms.local_keystore import LocalKeystore
from oubli_client import OubliClient
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy, CallerRule
from vault.api.rpcs import SERVICES
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server
from vault.catalog import Catalog
from vault.clock import Clock, utc_now
from vault.crypto.keycache import DataKeyCache
from vault.crypto.record_crypto import RecordCrypto
from vault.storage import Storage, make_engine, migrate
from vault.usecases.dek_rotation import DekRotation
from vault.usecases.erasure import Erasure
from vault.usecases.erasure_ledger import ErasureLedger
from vault.usecases.kek_rotation import KekRotation
from vault.usecases.key_rotation import Cryptoperiods, KeyRotation
from vault.usecases.service import VaultService


@dataclass
class Stack:
    server: RunningServer
    client: OubliClient
    kms: KeyManager
    storage: Storage
    database_url: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


#: A caller that may call every RPC, for tests that are not about authorization
#: (tests/api/test_authorization.py walks the real policy's caller x RPC matrix).
TEST_TOKEN = "test-admin-token-for-the-suite-only"
ALL_SERVICES = frozenset(f"{service}.*" for service in SERVICES)
TEST_POLICY_TOML = (
    "[callers.test-admin]\nrpcs = [" + ", ".join(f'"{r}"' for r in sorted(ALL_SERVICES)) + "]\n"
    'categories = "*"\npurposes = "*"\n'
)


def scratch_ledger(clock: Clock = utc_now) -> ErasureLedger:
    """An erasure ledger in a fresh temporary directory (removed at exit)."""
    directory = tempfile.mkdtemp(prefix="oubli-ledger-")
    atexit.register(shutil.rmtree, directory, True)
    return ErasureLedger(f"sqlite:///{directory}/erasures.db", clock=clock)


def vault_service(
    storage: Storage,
    kms: KeyManager,
    catalog: Catalog | None = None,
    *,
    cache: DataKeyCache | None = None,
    clock: Clock = utc_now,
    ledger: ErasureLedger | None = None,
) -> VaultService:
    """The domain over ``storage`` and ``kms``, as build_vault wires it: one RecordCrypto
    with its own DEK cache (a fresh one unless given), the shipped catalog by default,
    an erasure ledger of its own unless given."""
    crypto = RecordCrypto(storage, kms, cache=cache, clock=clock)
    return VaultService(
        storage,
        crypto,
        catalog or Catalog.load(),
        ledger=ledger or scratch_ledger(clock),
        clock=clock,
    )


def erasure_of(vault: VaultService) -> Erasure:
    """Erasure over ``vault``'s storage, record crypto, catalog, ledger and clock (as
    build_erasure wires it, with the default KMS backup retention)."""
    return Erasure(
        vault.storage, vault.crypto, vault.catalog, ledger=vault.ledger, clock=vault.clock
    )


def key_rotation_of(
    vault: VaultService,
    *,
    periods: Cryptoperiods | None = None,
    trim_after: timedelta = timedelta(days=7),
) -> KeyRotation:
    """Subject, bucket and DEK rotation over ``vault`` (as build_key_rotation wires it,
    without the service keys' rotations)."""
    return KeyRotation(
        keks=KekRotation(vault.storage, vault.crypto, trim_after=trim_after, clock=vault.clock),
        deks=DekRotation(vault.storage, vault.rekeying),
        service_keys={},
        periods=periods or Cryptoperiods(),
        clock=vault.clock,
    )


def suite_auth() -> tuple[Authenticator, CallerPolicy]:
    policy = CallerPolicy({"test-admin": CallerRule("test-admin", ALL_SERVICES, None, None)})
    return Authenticator({token_hash(TEST_TOKEN): "test-admin"}), policy


def start_stack(
    database_url: str,
    kms: KeyManager,
    auth: tuple[Authenticator, CallerPolicy] | None = None,
    *,
    clock: Clock | None = None,
) -> tuple[RunningServer, Storage]:
    """A served VaultService; ``auth`` defaults to the suite's all-RPC caller."""
    engine = make_engine(database_url)
    migrate(engine)
    storage = Storage(engine)
    vault = vault_service(storage, kms, clock=clock or utc_now)
    config = ServerConfig(listen="127.0.0.1:0")
    server = start_server(config, vault=vault, auth=auth or suite_auth(), clock=clock or utc_now)
    return server, storage


def stack_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, *, clock: Clock | None = None
) -> Iterator[Stack]:
    """SQLite with the local keystore; PostgreSQL with real OpenBao. ``clock``: a
    FakeClock the test moves (default: the real time)."""
    db, kms_name = request.param.split("+")
    url: str = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    kms: KeyManager = (
        LocalKeystore(tmp_path / "keystore.db")
        if kms_name == "local"
        else request.getfixturevalue("vault_kms")
    )
    server, storage = start_stack(url, kms, clock=clock)
    client = OubliClient(f"127.0.0.1:{server.port}", timeout=10, token=TEST_TOKEN)
    yield Stack(server, client, kms, storage, url)
    client.close()
    server.stop(grace=0)
