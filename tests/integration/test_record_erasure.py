"""Record-level erasure against an old database copy, with real OpenBao, on SQLite and
PostgreSQL.

As tests/integration/test_backup.py does for a shred: copy the database (SQLite online
backup API / pg_dump), then DeleteRecord a card and UpdateRecord an identity document
(erase_on_change categories), UpdateRecord a contact without and with
``erase_everywhere``; then read the old copy with the same OpenBao. The card and the
replaced identity cannot be had from the copy (its wrapped DEK's Transit key is
destroyed); the contact corrected without the option still can (documented,
docs/rights.md), with the option it cannot. The live database reads every other record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kms.base import KeyDestroyed
from kms.vault_transit import VaultTransitKeyManager
from oubli_client import OubliClient
from tests.conftest import PG_ADMIN_URL
from tests.integration.test_backup import _pg_copy, _sqlite_copy
from tests.stack import Stack, stack_fixture, vault_service
from vault.errors import KeyDestroyedError
from vault.storage import Storage, make_engine

CARD = {"card_holder": "Ada Lovelace", "card_number": "4111111111111111", "card_expiry": "12/29"}
IDENTITY = {"given_name": "Ada", "family_name": "Byron", "date_of_birth": "1815-12-10"}
CORRECTED = {"given_name": "Ada", "family_name": "Lovelace", "date_of_birth": "1815-12-10"}
CONTACT = {"email": "ada@example.org", "city": "London"}
MOVED = {"email": "ada@example.org", "city": "Paris"}
LOG = {"ip_address": "192.0.2.7"}


@pytest.fixture(params=["sqlite+vault", "postgresql+vault"])
def bao_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A served vault on SQLite or PostgreSQL, both with real OpenBao."""
    yield from stack_fixture(request, tmp_path)


@pytest.fixture
def copies(tmp_path: Path) -> Iterator[list[str]]:
    """PostgreSQL databases restored from a dump, dropped at the end."""
    made: list[str] = []
    yield made
    if made:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            for name in made:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_an_old_database_copy_cannot_yield_an_erased_value(
    bao_stack: Stack, tmp_path: Path, copies: list[str]
) -> None:
    client: OubliClient = bao_stack.client
    kms = bao_stack.kms
    assert isinstance(kms, VaultTransitKeyManager)

    def subject() -> tuple[str, dict[str, str]]:
        sid = client.create_subject().subject_id
        client.grant_consent(sid, "card_storage")
        made = {
            "card": ("payment", CARD),
            "identity": ("identity", IDENTITY),
            "contact": ("contact", CONTACT),
            "log": ("technical_logs", LOG),  # an expiry bucket's record
        }
        return sid, {
            name: client.create_record(sid, category, fields).record_id
            for name, (category, fields) in made.items()
        }

    carded, c_ids = subject()  # DeleteRecord of the card
    named, n_ids = subject()  # UpdateRecord of the identity
    plain, p_ids = subject()  # UpdateRecord of the contact, no option
    opted, o_ids = subject()  # UpdateRecord of the contact, erase_everywhere
    old_keys = {sid: bao_stack.storage.subject(sid).key_id for sid in (carded, named, opted)}
    copy_url = (
        _sqlite_copy(bao_stack.database_url, tmp_path)
        if bao_stack.database_url.startswith("sqlite")
        else _pg_copy(bao_stack.database_url, tmp_path, copies)
    )

    assert client.delete_record(carded, c_ids["card"]) is True
    client.update_record(named, n_ids["identity"], CORRECTED, 1)
    client.update_record(plain, p_ids["contact"], MOVED, 1)
    client.update_record(opted, o_ids["contact"], MOVED, 1, erase_everywhere=True)

    # The live database: the changes, and every other record of the subjects.
    for sid, ids in ((carded, c_ids), (named, n_ids), (plain, p_ids), (opted, o_ids)):
        identity = CORRECTED if sid == named else IDENTITY
        contact = MOVED if sid in (plain, opted) else CONTACT
        assert client.get_record(sid, ids["identity"], "service").fields == identity
        assert client.get_record(sid, ids["contact"], "service").fields == contact
        assert client.get_record(sid, ids["log"], "security").fields == LOG
        if sid != carded:
            assert client.get_record(sid, ids["card"], "billing").fields == CARD

    # The old copy, read with the live OpenBao by a fresh vault (cold cache).
    engine = make_engine(copy_url)
    try:
        storage = Storage(engine)
        old = vault_service(storage, kms)
        for sid, record_id, purpose in (
            (carded, c_ids["card"], "billing"),
            (named, n_ids["identity"], "service"),
            (opted, o_ids["contact"], "service"),
        ):
            info = storage.subject(sid)
            assert info.key_id == old_keys[sid] and info.wrapped_dek is not None
            assert old.get_subject(sid).state == "active"  # the copy knows nothing of it
            with pytest.raises(KeyDestroyedError):
                old.get_record(sid, record_id, purpose)
            with pytest.raises(KeyDestroyed):  # below the API: the DEK cannot be unwrapped
                kms.unwrap(info.key_id, info.wrapped_dek)
            assert not kms.key_exists(info.key_id)
        # Without the option, the copy still yields the replaced contact (rights.md).
        assert old.get_record(plain, p_ids["contact"], "service").fields == CONTACT
    finally:
        engine.dispose()
