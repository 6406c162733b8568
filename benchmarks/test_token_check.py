"""What authenticating a bearer token costs per call, in process.

Every call looks its token's hash up in ``bearer_tokens`` (vault.access.tokens): one indexed
read, so that a revocation committed on any machine counts from the next call. The
baseline is the pre-0007 check, a dict lookup of the hash in memory (same run). Both
hash the token; the difference is the database round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert

from kms.absent import AbsentKeyManager
from vault.access.authentication import Authenticator
from vault.access.tokens import DEFAULT_EXPIRY, TokenRegistry, token_hash
from vault.audit.chain import AuditLog
from vault.storage import Storage, make_engine, migrate
from vault.storage.bearer_tokens import TOKENS, BearerTokenRepository

NOW = datetime(2026, 11, 27, tzinfo=UTC)


@dataclass
class _Context:
    token: str

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def token_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('tokens') / 'oubli.db'}"
    else:
        url = request.getfixturevalue("pg_bench_url")
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.mark.benchmark(group="token-check")
def test_baseline_token_check_in_memory(benchmark) -> None:  # type: ignore[no-untyped-def]
    token = "oubli_" + "x" * 43
    auth = Authenticator({token_hash(token): "billing"})
    caller = benchmark(lambda: auth.authenticate(_Context(token)))  # type: ignore[arg-type]
    assert caller.name == "billing"


@pytest.mark.benchmark(group="token-check")
def test_token_check_database(benchmark, token_engine: Engine) -> None:  # type: ignore[no-untyped-def]
    audit = AuditLog(Storage(token_engine), AbsentKeyManager(), lambda: NOW, "")
    registry = TokenRegistry(BearerTokenRepository(token_engine), audit, lambda: NOW)
    # Other tokens in the table, as a deployment holds with their history.
    with token_engine.begin() as c:
        c.execute(
            insert(TOKENS),
            [
                {
                    "token_id": f"tok_{i:026d}",
                    "caller": "billing",
                    "token_hash": token_hash(f"other-{i}"),
                    "created_at": NOW,
                    "expires_at": NOW + DEFAULT_EXPIRY,
                    "source": "created",
                }
                for i in range(1000)
            ],
        )
    issued = registry.create("billing")
    auth = Authenticator(registry=registry)
    benchmark.extra_info["database"] = token_engine.dialect.name
    caller = benchmark(lambda: auth.authenticate(_Context(issued.token)))  # type: ignore[arg-type]
    assert caller.name == "billing"
