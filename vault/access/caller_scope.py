"""The caller's data permissions for the call in progress.

The interceptor authenticates the caller, checks the RPC against the caller policy and
binds the caller's rule here for the duration of the call; the domain asks it whether
a category or purpose is within the caller's reach. Outside a call (retention jobs,
tests of the domain) no rule is bound and only the catalog's rules apply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from vault.access.caller_policy import CallerPolicy, CallerRule
from vault.catalog import Category, Purpose

_current: ContextVar[CallerRule | None] = ContextVar("oubli_caller_rule", default=None)


@contextmanager
def acting_as(rule: CallerRule | None) -> Iterator[None]:
    token = _current.set(rule)
    try:
        yield
    finally:
        _current.reset(token)


def current_caller() -> str:
    rule = _current.get()
    return rule.name if rule is not None else "internal"


def check(category: Category | None = None, purpose: Purpose | None = None) -> None:
    """The caller's own limits for a category and/or a purpose.

    Both come from the catalog (``Catalog.category`` / ``Catalog.purpose``), not as the
    strings the caller sent: the refusal names them, in its message and its metadata,
    so a name must be known to the catalog before it may be refused by name. A value
    the caller typed into a purpose (an e-mail address, a card number) is refused as an
    unknown name first, without being repeated.
    """
    rule = _current.get()
    if rule is not None:
        CallerPolicy.check_data(
            rule,
            category.name if category is not None else None,
            purpose.name if purpose is not None else None,
        )


def within_reach(categories: Iterable[str]) -> list[str]:
    rule = _current.get()
    if rule is None or rule.categories is None:
        return list(categories)
    return [c for c in categories if c in rule.categories]


class ItemNote:
    """What one subject's items of a batch call touched, and how they ended."""

    def __init__(self) -> None:
        self.categories: set[str] = set()
        self.fields: set[str] = set()
        #: The error reason of the subject's first failed item; None when all succeeded.
        self.outcome: str | None = None


class AccessNote:
    """What a call touched, as names: categories and fields (never values). The
    interceptor opens one per call and writes it into the audit entry; a batch call
    also notes each subject's share (``items``), which becomes one entry per subject."""

    def __init__(self) -> None:
        self.categories: set[str] = set()
        self.fields: set[str] = set()
        #: Set when the call made the subject (CreateSubject has no subject id to name).
        self.subject_id: str | None = None
        #: The purpose the call read for when the server, not the request, states it
        #: (ReadUnderGrant: ``support``; GetAccessReport: ``access``).
        self.purpose: str | None = None
        #: Batch calls: (subject id, purpose) -> what its items touched, in the order
        #: first seen.
        self.items: dict[tuple[str, str], ItemNote] = {}
        self._items_lock = threading.Lock()

    def item(self, subject_id: str, purpose: str = "") -> ItemNote:
        with self._items_lock:  # batch items may run on several threads
            found = self.items.get((subject_id, purpose))
            if found is None:
                found = self.items[(subject_id, purpose)] = ItemNote()
            return found


_note: ContextVar[AccessNote | None] = ContextVar("oubli_access_note", default=None)


@contextmanager
def noting(note: AccessNote) -> Iterator[None]:
    token = _note.set(note)
    try:
        yield
    finally:
        _note.reset(token)


def note(category: str, fields: Iterable[str] = ()) -> None:
    current = _note.get()
    if current is not None:
        current.categories.add(category)
        current.fields.update(fields)


def current_note() -> AccessNote | None:
    return _note.get()


def note_subject(subject_id: str) -> None:
    current = _note.get()
    if current is not None:
        current.subject_id = subject_id


def note_purpose(purpose: str) -> None:
    """The purpose the call reads for, when the request has no ``purpose`` field."""
    current = _note.get()
    if current is not None:
        current.purpose = purpose
