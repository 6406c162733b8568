"""Concurrency properties through the gRPC API, on both stacks (SQLite + local keystore,
PostgreSQL + real OpenBao).

Each race sets up one subject (a stored card under the ``card_storage`` consent, a
contact, a support ticket, an invoice), then starts together, on a barrier, a seeded
mix of: a rectification of the contact (sometimes two from the same version), the
withdrawal of ``card_storage`` (which re-keys the subject), a RecordEvent on the ticket,
a rectification of the invoice, a new record (a log line, in an expiry bucket) and, in
some races, ShredSubject. Whatever the interleaving:

- no acknowledged write is lost: each record holds the content of its last
  acknowledged write, at the matching version, and can be decrypted;
- no erased or replaced value is readable again: after an acknowledged shred nothing
  but the held invoice is readable and no address finds the subject; after an
  acknowledged withdrawal the card is gone and the old key destroyed; the blind index
  finds the subject by its current e-mail address and by no replaced one.

Smoke size in CI (``RACES`` per stack); the long run, 200 races per stack:

    OUBLI_RACES=200 .venv/bin/python -m pytest tests/api/test_race_properties.py -q -rP
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from oubli_client import OubliClient, Record
from oubli_client.errors import Conflict, NotFound, OubliClientError
from tests.stack import Stack

RACES = int(os.environ.get("OUBLI_RACES", "8"))
#: Bounds: a racer waits this long at the barrier and for its call (the client's
#: deadline is 10 s); a race is abandoned, and reported, past it.
RACER_TIMEOUT = 30.0

CARD = {"card_holder": "Ada Lovelace", "card_number": "4111111111111111", "card_expiry": "12/29"}
TICKET = {"ticket_id": "T-1", "message": "cannot log in"}
LOG_LINE = {"event": "login", "server_id": "web-1"}

#: Racers besides the contact update and the withdrawal, with their chance to join.
OPTIONAL_RACERS = (
    ("event", 0.6),
    ("invoice", 0.5),
    ("update2", 0.3),
    ("create", 0.3),
    ("shred", 0.25),
)

#: The error each racer may answer with, besides success: a lost compare-and-set, and
#: an erased subject (only when a shred races).
LOSING = {"update": Conflict, "update2": Conflict, "invoice": Conflict}


@dataclass
class Race:
    number: int
    subject_id: str
    key_id: str
    contact: str
    ticket: str
    invoice: str
    card: str
    emails: dict[str, str]
    racers: list[str]
    outcomes: dict[str, object] = field(default_factory=dict)

    def acked(self, racer: str) -> bool:
        return racer in self.outcomes and not isinstance(self.outcomes[racer], BaseException)


def set_up(stack: Stack, number: int, rng: random.Random) -> Race:
    client = stack.client
    sid = client.create_subject().subject_id
    client.grant_consent(sid, "card_storage")
    emails = {
        name: f"race{number}-{name}@example.org" for name in ("original", "update", "update2")
    }
    card = client.create_record(sid, "payment", CARD, "customer").record_id
    contact = client.create_record(sid, "contact", {"email": emails["original"]}, "customer")
    ticket = client.create_record(sid, "support", TICKET, "support").record_id
    invoice = client.create_record(sid, "billing", {"invoice_number": "INV-1"}, "billing")
    racers = ["update", "withdraw"]
    for index, (racer, chance) in enumerate(OPTIONAL_RACERS):
        # Each optional racer joins with its chance, and every fifth race for sure, so
        # that even the smoke run has each of them at least once.
        if rng.random() < chance or number % len(OPTIONAL_RACERS) == index:
            racers.append(racer)
    rng.shuffle(racers)  # who starts its thread first varies too
    return Race(
        number,
        sid,
        stack.storage.subject(sid).key_id,
        contact.record_id,
        ticket,
        invoice.record_id,
        card,
        emails,
        racers,
    )


def calls(client: OubliClient, race: Race) -> dict[str, Callable[[], object]]:
    sid = race.subject_id
    return {
        "update": lambda: client.update_record(
            sid, race.contact, {"email": race.emails["update"]}, 1
        ),
        "update2": lambda: client.update_record(
            sid, race.contact, {"email": race.emails["update2"]}, 1
        ),
        "withdraw": lambda: client.withdraw_consent(sid, "card_storage"),
        "event": lambda: client.record_event(sid, race.ticket, "resolved"),
        "invoice": lambda: client.update_record(sid, race.invoice, {"invoice_number": "INV-2"}, 1),
        "create": lambda: client.create_record(sid, "technical_logs", LOG_LINE, "server"),
        "shred": lambda: client.shred_subject(sid),
    }


def run(client: OubliClient, race: Race) -> None:
    """Start every racer together and wait for all (bounded)."""
    barrier = threading.Barrier(len(race.racers))
    todo = calls(client, race)

    def racer(name: str) -> None:
        try:
            barrier.wait(timeout=RACER_TIMEOUT)
            race.outcomes[name] = todo[name]()
        except (OubliClientError, threading.BrokenBarrierError) as e:
            race.outcomes[name] = e

    threads = [threading.Thread(target=racer, args=(name,)) for name in race.racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RACER_TIMEOUT)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"race {race.number}: racers did not finish within {RACER_TIMEOUT}s"


def read(client: OubliClient, race: Race, record_id: str, purpose: str) -> Record | Exception:
    try:
        return client.get_record(race.subject_id, record_id, purpose)
    except OubliClientError as e:
        return e


def violations(stack: Stack, race: Race) -> list[str]:
    """Every property the race broke, as short descriptions (no values)."""
    client = stack.client
    found: list[str] = []
    shredded = race.acked("shred")
    for name, outcome in race.outcomes.items():
        if not isinstance(outcome, BaseException):
            continue
        erased = isinstance(outcome, NotFound) and outcome.reason == "SUBJECT_SHREDDED"
        if not (isinstance(outcome, LOSING.get(name, ())) or ("shred" in race.racers and erased)):
            found.append(f"{name} failed: {outcome}")

    # The contact: the last acknowledged rectification, or the original.
    winners = [name for name in ("update", "update2") if race.acked(name)]
    if len(winners) > 1:
        found.append("two updates from the same version were both acknowledged")
    current = race.emails[winners[0]] if winners else race.emails["original"]
    contact = read(client, race, race.contact, "service")
    invoice = read(client, race, race.invoice, "accounting")
    invoice_number = "INV-2" if race.acked("invoice") else "INV-1"
    invoice_version = 2 if race.acked("invoice") else 1
    if isinstance(invoice, Exception):
        found.append(f"invoice unreadable: {invoice}")
    elif (invoice.fields["invoice_number"], invoice.version) != (invoice_number, invoice_version):
        found.append(f"invoice lost a write (version {invoice.version})")

    if shredded:
        if client.get_subject(race.subject_id).state not in ("held", "shredded"):
            found.append("shred acknowledged but the subject is not erased")
        for name, record_id, purpose in (
            ("contact", race.contact, "service"),
            ("ticket", race.ticket, "support"),
            ("card", race.card, "billing"),
        ):
            if not isinstance(read(client, race, record_id, purpose), NotFound):
                found.append(f"{name} readable after the shred")
        if stack.kms.key_exists(stack.storage.subject(race.subject_id).key_id):
            found.append("subject key survives the shred")
        searched = list(race.emails.values())
    else:
        if isinstance(contact, Exception):
            found.append(f"contact unreadable: {contact}")
        elif contact.fields != {"email": current} or contact.version != 1 + len(winners[:1]):
            stored = contact.fields.get("email")
            landed = [n for n in ("update", "update2") if stored == race.emails[n]]
            found.append(
                f"contact holds {landed[0]}, answered {race.outcomes[landed[0]]!r}"
                if landed and not winners
                else f"contact lost a write (version {contact.version})"
            )
        ticket = read(client, race, race.ticket, "support")
        if isinstance(ticket, Exception):
            found.append(f"ticket unreadable: {ticket}")
        elif ticket.fields != TICKET:
            found.append("ticket content changed")
        elif race.acked("event") != (ticket.retain_until is not None) or ticket.version != (
            2 if race.acked("event") else 1
        ):
            found.append(f"ticket lost its event (version {ticket.version})")
        card = read(client, race, race.card, "billing")
        if race.acked("withdraw"):
            if not isinstance(card, NotFound):
                found.append("card readable after the consent was withdrawn")
        elif isinstance(card, Exception):
            found.append(f"card unreadable: {card}")
        created = race.outcomes.get("create")
        if isinstance(created, Record):
            log = read(client, race, created.record_id, "security")
            if isinstance(log, Exception):
                found.append(f"created record unreadable: {log}")
            elif log.fields != LOG_LINE:
                found.append("created record lost its content")
        if client.find_subject(email=current, purpose="service") != [race.subject_id]:
            found.append("not found by its current e-mail address")
        searched = [e for e in race.emails.values() if e != current]
    if (shredded or race.acked("withdraw")) and stack.kms.key_exists(race.key_id):
        found.append("the subject's first key survives")
    for email in searched:
        if client.find_subject(email=email, purpose="service"):
            found.append("found by an e-mail address it does not hold")
    return found


def test_interleavings_never_lose_or_resurrect_a_write(stack: Stack) -> None:
    rng = random.Random(20260409)
    broken: dict[int, list[str]] = {}
    mixes: dict[str, list[int]] = {}  # racer -> [acknowledged, started]
    for number in range(RACES):
        race = set_up(stack, number, rng)
        run(stack.client, race)
        for racer in race.racers:
            counts = mixes.setdefault(racer, [0, 0])
            counts[0] += race.acked(racer)
            counts[1] += 1
        if found := violations(stack, race):
            broken[number] = found
    lost = sum(any("lost" in v or "unreadable" in v for v in vs) for vs in broken.values())
    summary = (
        f"{len(broken)} of {RACES} races broke a property ({lost} lost an acknowledged write); "
        "racers acknowledged/started: "
        + ", ".join(f"{name} {ok}/{n}" for name, (ok, n) in sorted(mixes.items()))
    )
    print(summary)
    assert not broken, summary + "".join(
        f"\n  race {number}: {'; '.join(found)}" for number, found in sorted(broken.items())
    )
