"""The caller's data permissions for the call in progress.

The interceptor authenticates the caller, checks the RPC against the caller policy and
binds the caller's rule here for the duration of the call; the domain asks it whether
a category or purpose is within the caller's reach. Outside a call (retention jobs,
tests of the domain) no rule is bound and only the catalog's rules apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from vault.callers import CallerPolicy, CallerRule

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


def check(category: str | None = None, purpose: str | None = None) -> None:
    rule = _current.get()
    if rule is not None:
        CallerPolicy.check_data(rule, category, purpose)


def within_reach(categories: Iterable[str]) -> list[str]:
    rule = _current.get()
    if rule is None or rule.categories is None:
        return list(categories)
    return [c for c in categories if c in rule.categories]
