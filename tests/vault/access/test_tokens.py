"""Bearer tokens in the database: expiry, revocation, rotation, import, audit (FakeClock)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from kms.absent import AbsentKeyManager
from tests.audit_tables import audit_dump
from tests.clock import FakeClock
from vault.access.authentication import Authenticator
from vault.access.tokens import (
    DEFAULT_EXPIRY,
    DEFAULT_GRACE,
    LAST_USED_GRANULARITY,
    TokenNotFound,
    TokenRegistry,
    parse_duration,
    read_tokens_file,
    token_hash,
)
from vault.audit.chain import AuditLog
from vault.errors import (
    FailedPrecondition,
    InvalidArgument,
    TokenExpired,
    TokenRevoked,
    Unauthenticated,
    Unavailable,
)
from vault.storage import Storage, make_engine, migrate
from vault.storage.bearer_tokens import BearerTokenRepository

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@dataclass
class _Context:
    """What Authenticator reads of a grpc.ServicerContext."""

    token: str | None

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [] if self.token is None else [("authorization", f"Bearer {self.token}")]

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def audit(engine: Engine, clock: FakeClock) -> AuditLog:
    # Lifecycle commands only append: no KMS, as in `oubli token`.
    return AuditLog(Storage(engine), AbsentKeyManager(), clock, "")


@pytest.fixture
def registry(engine: Engine, audit: AuditLog, clock: FakeClock) -> TokenRegistry:
    return TokenRegistry(BearerTokenRepository(engine), audit, clock)


def _caller(registry: TokenRegistry, token: str) -> str:
    return Authenticator(registry=registry).authenticate(_Context(token)).name  # type: ignore[arg-type]


def test_a_token_works_until_it_expires_then_is_refused_as_expired(
    registry: TokenRegistry, clock: FakeClock
) -> None:
    issued = registry.create("billing", timedelta(days=1))
    assert issued.info.expires_at == START + timedelta(days=1)
    assert _caller(registry, issued.token) == "billing"
    clock.advance(hours=23)
    assert _caller(registry, issued.token) == "billing"
    clock.advance(hours=1)
    with pytest.raises(TokenExpired) as refused:
        _caller(registry, issued.token)
    assert refused.value.reason == "TOKEN_EXPIRED"
    assert refused.value.metadata == {"token_id": issued.info.token_id}


def test_tokens_expire_after_90_days_by_default_and_never_after_more_than_a_year(
    registry: TokenRegistry,
) -> None:
    assert timedelta(days=90) == DEFAULT_EXPIRY
    assert registry.create("billing").info.expires_at == START + timedelta(days=90)
    assert registry.create("billing", timedelta(days=365)).info.expires_at is not None
    for lifetime in (timedelta(days=366), timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(InvalidArgument):
            registry.create("billing", lifetime)
    with pytest.raises(InvalidArgument):
        registry.create("Not A Caller")


def test_unknown_and_missing_tokens_are_plainly_unauthenticated(registry: TokenRegistry) -> None:
    registry.create("billing")
    for token in ("oubli_not-a-real-token", None):
        with pytest.raises(Unauthenticated) as refused:
            Authenticator(registry=registry).authenticate(_Context(token))  # type: ignore[arg-type]
        assert type(refused.value) is Unauthenticated
        assert refused.value.reason == "UNAUTHENTICATED"


def test_a_token_lookup_without_database_is_unavailable_never_let_in(
    audit: AuditLog, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'oubli.db'}")
    registry = TokenRegistry(BearerTokenRepository(engine), audit)
    with pytest.raises(Unavailable) as refused:
        Authenticator(registry=registry).authenticate(_Context("oubli_" + "x" * 43))  # type: ignore[arg-type]
    assert refused.value.reason == "BACKEND_UNAVAILABLE"
    engine.dispose()


def test_a_revoked_token_is_refused_at_once_even_by_a_clock_behind_the_revoker(
    engine: Engine, audit: AuditLog, registry: TokenRegistry, clock: FakeClock
) -> None:
    issued = registry.create("billing")
    # A second registry (as on another replica) whose clock is an hour behind the revoker.
    behind = FakeClock(START - timedelta(hours=1))
    replica = TokenRegistry(BearerTokenRepository(engine), audit, behind)
    assert _caller(replica, issued.token) == "billing"
    clock.advance(hours=2)
    info, revoked_now = registry.revoke(issued.info.token_id)
    assert revoked_now and info.revoked_at == clock.now
    for reader in (replica, registry):
        with pytest.raises(TokenRevoked) as refused:
            _caller(reader, issued.token)
        assert refused.value.reason == "TOKEN_REVOKED"
    again, revoked_now = registry.revoke(issued.info.token_id)
    assert not revoked_now and again.revoked_at == info.revoked_at
    with pytest.raises(TokenNotFound):
        registry.revoke("tok_" + "a" * 26)
    with pytest.raises(TokenNotFound):
        registry.revoke("billing")


def test_rotate_keeps_the_old_token_for_the_grace_period_only(
    registry: TokenRegistry, clock: FakeClock
) -> None:
    old = registry.create("billing")
    rotation = registry.rotate("billing", grace=timedelta(minutes=30))
    new = rotation.issued
    assert [t.token_id for t in rotation.replaced] == [old.info.token_id]
    assert rotation.replaced[0].expires_at == START + timedelta(minutes=30)
    assert rotation.replaced[0].replaced_by == new.info.token_id
    assert new.info.expires_at == START + DEFAULT_EXPIRY
    clock.set(START + timedelta(minutes=29))
    assert _caller(registry, old.token) == _caller(registry, new.token) == "billing"
    clock.set(START + timedelta(minutes=30))
    with pytest.raises(TokenExpired):
        _caller(registry, old.token)
    assert _caller(registry, new.token) == "billing"


def test_rotate_never_extends_a_token_and_keeps_its_first_successor(
    registry: TokenRegistry, clock: FakeClock
) -> None:
    old = registry.create("billing", timedelta(minutes=10))
    first = registry.rotate(old.info.token_id, grace=timedelta(hours=5))
    assert first.replaced[0].expires_at == START + timedelta(minutes=10)
    second = registry.rotate("billing", grace=timedelta(minutes=5))
    by_id = {t.token_id: t for t in second.replaced}
    assert set(by_id) == {old.info.token_id, first.issued.info.token_id}
    assert by_id[old.info.token_id].replaced_by == first.issued.info.token_id
    assert by_id[old.info.token_id].expires_at == START + timedelta(minutes=5)


def test_rotate_now_revokes_at_once_and_only_the_callers_tokens(
    registry: TokenRegistry,
) -> None:
    billing = [registry.create("billing"), registry.create("billing")]
    support = registry.create("support")
    rotation = registry.rotate("billing", grace=None)
    assert {t.token_id for t in rotation.replaced} == {b.info.token_id for b in billing}
    for old in billing:
        with pytest.raises(TokenRevoked):
            _caller(registry, old.token)
    assert _caller(registry, rotation.issued.token) == "billing"
    assert _caller(registry, support.token) == "support"


def test_rotate_refuses_when_nothing_is_active(registry: TokenRegistry, clock: FakeClock) -> None:
    with pytest.raises(FailedPrecondition) as nothing:
        registry.rotate("billing")
    assert nothing.value.reason == "TOKEN_NOT_ACTIVE"
    issued = registry.create("billing", timedelta(hours=1))
    clock.advance(hours=1)
    with pytest.raises(FailedPrecondition):
        registry.rotate(issued.info.token_id)
    for grace in (timedelta(0), timedelta(days=31)):
        with pytest.raises(InvalidArgument):
            registry.rotate("billing", grace=grace)
    assert timedelta(hours=1) == DEFAULT_GRACE


def test_a_tokens_file_is_imported_once_and_never_revives_a_revoked_token(
    registry: TokenRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[tokens]\n"billing" = ["{token_hash("t-billing")}"]\n'
        f'"support" = "{token_hash("t-support")}"\n'
    )
    assert registry.import_file(path) == 2
    assert registry.import_file(path) == 0
    assert _caller(registry, "t-billing") == "billing"
    imported = {t.caller: t for t in registry.tokens()}
    assert imported["billing"].expires_at is None and imported["billing"].source == "imported"
    registry.revoke(imported["billing"].token_id)
    assert registry.import_file(path) == 0
    with pytest.raises(TokenRevoked):
        _caller(registry, "t-billing")
    assert registry.import_file(tmp_path / "absent.toml") == 0


@pytest.mark.parametrize(
    "content",
    ["tokens = 5\n", '[tokens]\n"billing" = ["plain-token"]\n', '[tokens]\n"Bad Name" = []\n'],
)
def test_a_malformed_tokens_file_is_a_value_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    with pytest.raises(ValueError):
        read_tokens_file(path)


def test_lifecycle_is_audited_with_caller_names_and_token_ids_only(
    engine: Engine, registry: TokenRegistry, audit: AuditLog, tmp_path: Path
) -> None:
    first = registry.create("billing")
    registry.revoke(first.info.token_id)
    second = registry.create("billing")
    rotation = registry.rotate("billing", grace=None)
    (tmp_path / "tokens.toml").write_text(f'[tokens]\n"dpo" = ["{token_hash("t-dpo")}"]\n')
    registry.import_file(tmp_path / "tokens.toml")
    dpo = registry.tokens("dpo")[0]

    entries = [
        (e.event.caller, e.event.action, e.event.fields, e.event.outcome) for e in audit.query()
    ]
    new = rotation.issued.info.token_id
    assert entries == [
        ("billing", "token.create", (first.info.token_id,), "STARTED"),
        ("billing", "token.create", (first.info.token_id,), "OK"),
        ("billing", "token.revoke", (first.info.token_id,), "STARTED"),
        ("billing", "token.revoke", (first.info.token_id,), "OK"),
        ("billing", "token.create", (second.info.token_id,), "STARTED"),
        ("billing", "token.create", (second.info.token_id,), "OK"),
        ("billing", "token.create", (new,), "STARTED"),
        ("billing", "token.rotate", (second.info.token_id, new), "STARTED"),
        ("billing", "token.create", (new,), "OK"),
        ("billing", "token.rotate", (second.info.token_id, new), "OK"),
        ("dpo", "token.import", (dpo.token_id,), "STARTED"),
        ("dpo", "token.import", (dpo.token_id,), "OK"),
    ]
    assert audit.verify().ok
    stored = audit_dump(Storage(engine))
    for secret in (first.token, second.token, rotation.issued.token, "t-dpo"):
        assert secret not in stored
        assert token_hash(secret).removeprefix("sha256:") not in stored


def test_a_change_whose_audit_entry_cannot_be_written_is_not_made(
    registry: TokenRegistry, audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = registry.create("billing")

    def refuse(events: Any) -> Any:
        raise Unavailable("audit log write failed: OperationalError")

    monkeypatch.setattr(audit, "append_many", refuse)
    with pytest.raises(Unavailable):
        registry.create("billing")
    with pytest.raises(Unavailable):
        registry.revoke(issued.info.token_id)
    with pytest.raises(Unavailable):
        registry.rotate("billing")
    monkeypatch.undo()
    assert [t.token_id for t in registry.tokens()] == [issued.info.token_id]
    assert registry.get(issued.info.token_id).revoked_at is None


def test_last_use_is_stamped_at_most_every_few_minutes(
    registry: TokenRegistry, clock: FakeClock
) -> None:
    issued = registry.create("billing")
    assert registry.get(issued.info.token_id).last_used_at is None
    _caller(registry, issued.token)
    assert registry.get(issued.info.token_id).last_used_at == START
    clock.now = START + LAST_USED_GRANULARITY - timedelta(seconds=1)
    _caller(registry, issued.token)
    assert registry.get(issued.info.token_id).last_used_at == START
    clock.now = START + LAST_USED_GRANULARITY
    _caller(registry, issued.token)
    assert registry.get(issued.info.token_id).last_used_at == clock.now


def test_list_holds_no_hash() -> None:
    from vault.access.tokens import TokenInfo

    assert not {"hash", "token", "token_hash"} & set(TokenInfo.__slots__)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "-1d", "1y", "d", "1.5h", "10 days", "1d2h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
