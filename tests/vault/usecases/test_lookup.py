"""Lookup by e-mail or phone (vault.crypto.blind_index) on both databases, with the
in-memory KMS."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import select

from tests.memory_kms import InMemoryKeyManager
from vault.crypto.blind_index import (
    INDEX_KEY_NAME,
    BlindIndex,
    IndexKeyStore,
    indexed_values,
    matches,
    normalise,
    normalise_email,
    normalise_phone,
    recommended_bits,
)
from vault.errors import InvalidArgument, Unavailable
from vault.storage import Storage
from vault.storage.tables import BlindIndexRow, ServiceKeyRow
from vault.usecases.erasure import Erasure
from vault.usecases.service import VaultService

Builder = Callable[..., VaultService]
KEY = bytes(range(32))


@pytest.fixture
def vault(storage: Storage, memory_kms: InMemoryKeyManager, make_vault: Builder) -> VaultService:
    return make_vault(storage, memory_kms)


def contact(vault: VaultService, **fields: str) -> tuple[str, str]:
    subject = vault.create_subject()
    record = vault.create_record(subject.subject_id, "contact", fields, "customer")
    return subject.subject_id, record.record_id


def index_record(index: BlindIndex, vault: VaultService, subject_id: str, record_id: str) -> bool:
    """What the service does after a write: decrypt, compute the values, index."""
    record = vault.get_record(subject_id, record_id, "service")
    return index.index(subject_id, record_id, indexed_values(record.category, record.fields))


# --- normalisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ada@example.org", "ada@example.org"),
        ("  Ada.Lovelace@Example.ORG \n", "ada.lovelace@example.org"),
        ("ADA+billing@EXAMPLE.org", "ada+billing@example.org"),
        ("Zoë@exämple.de", "zoë@exämple.de"),
        ("Zoe\u0308@example.de", "zoë@example.de"),  # decomposed umlaut: NFC
        ("x@y", "x@y"),
    ],
)
def test_normalise_email(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected
    assert normalise("email", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "ada.example.org",
        "ada@@example.org",
        "ada@example@org",
        "@example.org",
        "ada@",
        "ada lovelace@example.org",
        "ada@exa mple.org",
        "ada\t@example.org",
        "ada\x00@example.org",
        "a" * 250 + "@example.org",
    ],
)
def test_normalise_email_rejects_without_echo(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalise_email(raw)
    assert caught.value.field == "value"
    assert_no_echo(caught.value, raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+33 6 12 34 56 78", "+33612345678"),
        ("0033 6 12 34 56 78", "+33612345678"),
        ("+33 (0)6 12 34 56 78", "+33612345678"),
        ("+44 (20) 7946-0958", "+442079460958"),
        ("(555) 123-4567", "5551234567"),
        ("06.12.34.56.78", "0612345678"),
        (" +1 555 010 9999 ", "+15550109999"),
        ("123456", "123456"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_normalise_phone(raw: str, expected: str) -> None:
    assert normalise_phone(raw) == expected
    assert normalise("phone", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "12345",  # 5 digits
        "+1234567890123456",  # 16 digits
        "++33612345678",
        "+33+612345678",
        "33 6 12 34 56 78 ext. 12",
        "06-12-34-56-7x",
        "\u0661\u0662\u0663\u0664\u0665\u0666",  # Arabic-Indic digits: not ASCII
        "0" * 100,
        "ada@example.org",
    ],
)
def test_normalise_phone_rejects_without_echo(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalise_phone(raw)
    assert caught.value.field == "value"
    assert_no_echo(caught.value, raw)


def assert_no_echo(error: InvalidArgument, raw: str) -> None:
    shown = str(error) + " ".join(error.metadata.values())
    for part in (raw, raw.strip()):
        if len(part) >= 3:
            assert part not in shown


def test_normalise_rejects_unknown_kinds_and_non_strings() -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalise("postal", "1 rue de la Paix")
    assert caught.value.field == "kind"
    with pytest.raises(InvalidArgument):
        normalise_email(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        normalise_phone("\ud800123456")  # lone surrogate: not UTF-8


def _stable(kind: str, raw: str) -> None:
    try:
        once = normalise(kind, raw)
    except InvalidArgument:
        return
    assert normalise(kind, once) == once


@given(st.one_of(st.emails(), st.text(), st.text(alphabet=" AaÉé\u0301İßẞ@.+-_\t0")))
def test_normalising_an_email_twice_is_stable(raw: str) -> None:
    _stable("email", raw)


@given(st.one_of(st.from_regex(r"(\+|00)?[0-9 ().\-]{4,30}", fullmatch=True), st.text()))
@example("0.0000000")  # "00000000" once, "+000000" twice, before separators went first
@example("0.00000")
def test_normalising_a_phone_twice_is_stable(raw: str) -> None:
    _stable("phone", raw)


def test_indexed_values_picks_catalog_fields_and_skips_odd_values() -> None:
    assert indexed_values(
        "contact", {"email": " Ada@Example.org", "phone": "+33 6 12 34 56 78"}
    ) == {
        "email": "ada@example.org",
        "phone": "+33612345678",
    }
    assert indexed_values("contact", {"email": "ada@example.org", "phone": "ask reception"}) == {
        "email": "ada@example.org"
    }
    assert indexed_values("contact", {"city": "Paris", "email": "not an address"}) == {}
    assert indexed_values("credentials", {"recovery_email": "Ada@Example.org"}) == {
        "email": "ada@example.org"
    }
    assert indexed_values("credentials", {"username": "ada@example.org"}) == {}
    assert indexed_values("identity", {"email": "ada@example.org"}) == {}


def test_matches_confirms_only_the_same_normalised_value() -> None:
    fields = {"email": "ada@example.org", "phone": "06 12 34 56 78"}
    assert matches("email", " ADA@example.org ", "contact", fields)
    assert matches("phone", "06.12.34.56.78", "contact", fields)
    assert not matches("email", "bob@example.org", "contact", fields)
    assert not matches("phone", "+33 6 12 34 56 78", "contact", fields)  # no inference
    assert not matches("email", "ada@example.org", "identity", fields)


# --- tags --------------------------------------------------------------------------


def test_recommended_bits_follow_ciphersweet_planner() -> None:
    assert recommended_bits(50_000) == (8, 15)  # the planner documentation's example
    low, high = recommended_bits(100_000)
    assert (low, high) == (9, 16)  # 16, the default, is the maximum at 10^5 subjects
    assert 100_000 / 2**15 >= 2 and 100_000 / 2**low <= 100_000**0.5
    with pytest.raises(ValueError):
        recommended_bits(0)


@pytest.mark.parametrize("bits", [1, 2, 8, 16, 31])
def test_tag_width_respects_bits(storage: Storage, bits: int) -> None:
    index = BlindIndex(storage, KEY, bits=bits)
    tags = {index.tag("email", f"user{i}@example.org") for i in range(200)}
    assert all(0 <= t < 2**bits for t in tags)
    if bits >= 8:
        assert len(tags) > 100  # spread, not constant
    else:
        assert len(tags) == 2**bits


def test_tag_is_the_truncated_hmac_of_kind_and_normalised_value(storage: Storage) -> None:
    index = BlindIndex(storage, KEY, bits=16)
    digest = hmac.new(KEY, b"email\0ada@example.org", hashlib.sha256).digest()
    assert index.tag("email", "ada@example.org") == int.from_bytes(digest[:2], "big")
    assert index.tag("email", "  ADA@example.org") == index.tag("email", "ada@example.org")
    wide = BlindIndex(storage, KEY, bits=31)
    assert wide.tag("email", "123456@example.org") != BlindIndex(storage, bytes(32), bits=31).tag(
        "email", "123456@example.org"
    )
    assert "ada" not in repr(index) and KEY.hex() not in repr(index)


@pytest.mark.parametrize("bits", [0, 32, 64])
def test_tag_width_out_of_range_is_refused(storage: Storage, bits: int) -> None:
    with pytest.raises(ValueError):
        BlindIndex(storage, KEY, bits=bits)
    with pytest.raises(ValueError):
        BlindIndex(storage, b"short", bits=16)


# --- the index ---------------------------------------------------------------------


def test_index_replace_and_remove(storage: Storage, vault: VaultService) -> None:
    index = BlindIndex(storage, KEY, bits=31)  # wide: no coincidence among a few rows
    subject_id, record_id = contact(vault, email="Ada@Example.org", phone="06 12 34 56 78")
    assert index_record(index, vault, subject_id, record_id)
    assert index.candidates("email", "ada@example.org") == [(subject_id, record_id)]
    assert index.candidates("phone", "0612345678") == [(subject_id, record_id)]
    assert index.candidates("email", "bob@example.org") == []
    with pytest.raises(InvalidArgument):  # an e-mail address is not a phone number
        index.candidates("phone", "ada@example.org")

    # Rectification: the record's rows are replaced, not added to.
    vault.update_record(subject_id, record_id, {"email": "ada@example.com"}, 1)
    assert index_record(index, vault, subject_id, record_id)
    assert index.candidates("email", "ada@example.org") == []
    assert index.candidates("phone", "0612345678") == []
    assert index.candidates("email", "ADA@example.com") == [(subject_id, record_id)]

    # A recovery e-mail is found as an e-mail too, next to the contact record.
    creds = vault.create_record(
        subject_id, "credentials", {"recovery_email": "ada@example.com"}, "customer"
    )
    assert index_record(index, vault, subject_id, creds.record_id)
    assert index.candidates("email", "ada@example.com") == sorted(
        [(subject_id, record_id), (subject_id, creds.record_id)]
    )

    assert index.remove_record(subject_id, record_id) == 1
    assert index.candidates("email", "ada@example.com") == [(subject_id, creds.record_id)]
    assert index.remove_subject(subject_id) == 1
    assert index.candidates("email", "ada@example.com") == []
    assert index.remove_subject(subject_id) == 0


def test_index_with_nothing_to_index_clears_the_record(
    storage: Storage, vault: VaultService
) -> None:
    index = BlindIndex(storage, KEY)
    subject_id, record_id = contact(vault, email="ada@example.org")
    assert index_record(index, vault, subject_id, record_id)
    assert index.index(subject_id, record_id, {})
    assert rows(storage) == []


def forget_service_index(storage: Storage) -> None:
    """VaultService indexes contact records itself; these tests watch only their own."""
    from sqlalchemy import text

    with storage.engine.begin() as c:
        c.execute(text("DELETE FROM blind_index"))


def test_index_refuses_unknown_kinds(storage: Storage, vault: VaultService) -> None:
    index = BlindIndex(storage, KEY)
    subject_id, record_id = contact(vault, email="ada@example.org")
    forget_service_index(storage)
    with pytest.raises(InvalidArgument):
        index.index(subject_id, record_id, {"postal": "1 rue de la Paix"})
    with pytest.raises(InvalidArgument):
        index.candidates("postal", "1 rue de la Paix")
    assert rows(storage) == []


def test_index_writes_nothing_for_a_missing_record(storage: Storage, vault: VaultService) -> None:
    index = BlindIndex(storage, KEY)
    subject_id, _ = contact(vault, email="ada@example.org")
    forget_service_index(storage)
    assert not index.index(subject_id, "a" * 26, {"email": "ada@example.org"})
    assert not index.index("b" * 26, "a" * 26, {"email": "ada@example.org"})
    assert rows(storage) == []


def test_deleting_a_record_deletes_its_rows(storage: Storage, vault: VaultService) -> None:
    index = BlindIndex(storage, KEY)
    subject_id, record_id = contact(vault, email="ada@example.org", phone="+33612345678")
    assert index_record(index, vault, subject_id, record_id)
    assert len(rows(storage)) == 2
    vault.delete_record(subject_id, record_id)  # the foreign key cascades
    assert rows(storage) == []


def test_lookup_before_and_after_shred(
    storage: Storage, vault: VaultService, erasure: Erasure
) -> None:
    index = BlindIndex(storage, KEY)
    subject_id, record_id = contact(vault, email="ada@example.org", phone="+33612345678")
    creds = vault.create_record(
        subject_id, "credentials", {"recovery_email": "ada@example.org"}, "customer"
    )
    other_id, other_record = contact(vault, email="bob@example.org")
    for s, r in [(subject_id, record_id), (subject_id, creds.record_id), (other_id, other_record)]:
        assert index_record(index, vault, s, r)
    assert (subject_id, record_id) in index.candidates("email", "ada@example.org")

    erasure.shred(subject_id)
    # Deleting the records at shred deleted their rows; the other subject is untouched.
    found = index.candidates("email", "ada@example.org") + index.candidates("phone", "+33612345678")
    assert all(s != subject_id for s, _ in found)
    assert {r.subject_id for r in rows(storage)} == {other_id}
    assert index.remove_subject(subject_id) == 0
    # A write racing the shred cannot bring rows back.
    assert not index.index(subject_id, record_id, {"email": "ada@example.org"})
    assert {r.subject_id for r in rows(storage)} == {other_id}


def test_index_refused_once_erasure_started(storage: Storage, vault: VaultService) -> None:
    index = BlindIndex(storage, KEY)
    subject_id, record_id = contact(vault, email="ada@example.org")
    assert index_record(index, vault, subject_id, record_id)
    storage.mark_shredding([subject_id], vault.clock())
    assert index.remove_subject(subject_id) == 1
    assert not index.index(subject_id, record_id, {"email": "ada@example.org"})
    assert rows(storage) == []


def test_short_tags_collide_so_candidates_must_be_confirmed(
    storage: Storage, vault: VaultService
) -> None:
    index = BlindIndex(storage, KEY, bits=1)
    emails = ["ada@example.org", "bob@example.org", "eve@example.org"]
    records = {email: contact(vault, email=email) for email in emails}
    for subject_id, record_id in records.values():
        assert index_record(index, vault, subject_id, record_id)
    # Two tag values, three addresses: at least two addresses share a tag.
    by_tag: dict[int, list[str]] = {}
    for email in emails:
        by_tag.setdefault(index.tag("email", email), []).append(email)
    shared = next(group for group in by_tag.values() if len(group) > 1)
    wanted, other = shared[0], shared[1]
    found = index.candidates("email", wanted)
    assert records[wanted] in found and records[other] in found
    confirmed = [
        (s, r)
        for s, r in found
        if matches("email", wanted, "contact", vault.get_record(s, r, "service").fields)
    ]
    assert confirmed == [records[wanted]]


# --- the index key -----------------------------------------------------------------


class RecordingKms(InMemoryKeyManager):
    """Remembers every key it created; ``before_create`` runs once, first."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.before_create: Callable[[], None] | None = None

    def create_key(self, key_id: str) -> None:
        hook, self.before_create = self.before_create, None
        if hook is not None:
            hook()
        super().create_key(key_id)
        self.created.append(key_id)


def test_index_key_is_created_once_and_reloaded_with_one_unwrap(storage: Storage) -> None:
    kms = RecordingKms()
    before = kms.calls
    key = IndexKeyStore(storage).load_or_create(kms)
    assert len(key) == 32
    assert kms.calls - before == 2  # create_key + generate_data_key
    with storage.engine.connect() as c:
        stored = c.execute(select(ServiceKeyRow)).all()
    assert [(row.name, row.key_id) for row in stored] == [(INDEX_KEY_NAME, kms.created[0])]
    assert key not in stored[0].wrapped_dek

    before = kms.calls
    again = IndexKeyStore(Storage(storage.engine)).load_or_create(kms)  # a restart
    assert again == key
    assert kms.calls - before == 1  # one unwrap, nothing else
    assert len(kms.created) == 1

    # Lookups make no KMS call at all.
    before = kms.calls
    index = BlindIndex(storage, again)
    index.candidates("email", "ada@example.org")
    index.tag("phone", "+33612345678")
    assert kms.calls == before

    other = IndexKeyStore(storage).load_or_create(kms, name="another-service-key")
    assert other != key and len(kms.created) == 2


def test_index_key_creation_race_keeps_one_key(storage: Storage) -> None:
    kms = RecordingKms()
    winner: list[bytes] = []
    # The other replica creates the key after we found none and before we insert ours.
    kms.before_create = lambda: winner.append(IndexKeyStore(storage).load_or_create(kms))
    loser = IndexKeyStore(storage).load_or_create(kms)
    assert loser == winner[0]
    assert len(kms.created) == 2
    with storage.engine.connect() as c:
        (row,) = c.execute(select(ServiceKeyRow)).all()
    assert kms.key_exists(row.key_id)
    (discarded,) = [k for k in kms.created if k != row.key_id]
    assert not kms.key_exists(discarded)  # the losing key is destroyed, not orphaned
    assert IndexKeyStore(storage).load_or_create(kms) == loser


def test_index_key_concurrent_starts_agree(storage: Storage) -> None:
    kms = RecordingKms()
    barrier = threading.Barrier(6)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            results.append(IndexKeyStore(storage).load_or_create(kms))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 6 and len(set(results)) == 1
    with storage.engine.connect() as c:
        (row,) = c.execute(select(ServiceKeyRow)).all()
    assert [k for k in kms.created if kms.key_exists(k)] == [row.key_id]


def test_index_key_kms_outage(storage: Storage) -> None:
    kms = RecordingKms()
    kms.unavailable = True
    with pytest.raises(Unavailable):
        IndexKeyStore(storage).load_or_create(kms)
    with storage.engine.connect() as c:
        assert c.execute(select(ServiceKeyRow)).all() == []
    kms.unavailable = False
    key = IndexKeyStore(storage).load_or_create(kms)
    kms.unavailable = True
    with pytest.raises(Unavailable):
        IndexKeyStore(storage).load_or_create(kms)
    kms.unavailable = False
    assert IndexKeyStore(storage).load_or_create(kms) == key


# --- no personal data at rest ------------------------------------------------------


def rows(storage: Storage) -> list[BlindIndexRow]:
    with storage.engine.connect() as c:
        return list(c.execute(select(BlindIndexRow)).all())  # type: ignore[arg-type]


def test_index_tables_hold_no_planted_value(storage: Storage, vault: VaultService) -> None:
    kms = vault.crypto.kms
    key = IndexKeyStore(storage).load_or_create(kms)
    index = BlindIndex(storage, key)
    email, phone, recovery = "Planted.Canary@Example.ORG", "+33 6 98 76 54 32", "zz.c4nary@ex.net"
    subject_id, record_id = contact(vault, email=email, phone=phone)
    creds = vault.create_record(subject_id, "credentials", {"recovery_email": recovery}, "x")
    assert index_record(index, vault, subject_id, record_id)
    assert index_record(index, vault, subject_id, creds.record_id)

    planted = {email, phone, recovery}
    planted |= {normalise_email(email), normalise_phone(phone), normalise_email(recovery)}
    planted |= {normalise_phone(phone).lstrip("+"), "Planted.Canary", "planted.canary", "c4nary"}
    dump: list[str] = []
    with storage.engine.connect() as c:
        for table in ("blind_index", "service_keys"):
            for row in c.exec_driver_sql(f"SELECT * FROM {table}"):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        dump += [raw.hex(), raw.decode("latin-1")]
                    else:
                        dump.append(str(value))
    assert len(dump) > 10
    text = "\n".join(dump)
    for value in planted:
        assert value not in text
        assert value.encode().hex() not in text
