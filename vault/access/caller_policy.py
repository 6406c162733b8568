"""Who may call what: the per-caller policy (least privilege, seed 000).

A TOML file maps each caller — named by its client certificate's common name (mTLS) or
by its bearer token — to the RPCs it may call, and for record content to the categories
and purposes it may use. Checked on every call, before the domain runs; the domain's
own purpose rules (vault.usecases.purpose_check) apply on top.

RPC names are checked against the RPC table (vault.api.rpcs) at load, and a caller whose
``content`` is ``"under-grant"`` (support, seed 002) may be given no RPC that returns
field values other than those bound to a live support grant: a policy that would let it
read by purpose is refused at load, not discovered at the first call.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vault.api.rpcs import Content, declared, matching
from vault.errors import PermissionDenied

CALLER_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
_RPC = re.compile(r"[A-Z][A-Za-z]*Service\.([A-Z][A-Za-z]*|\*)")


class CallerPolicyError(ValueError):
    """The caller policy file is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class CallerRule:
    name: str
    #: "Service.Method" names, or "Service.*".
    rpcs: frozenset[str]
    #: Categories whose content the caller may read or write; None = every category.
    categories: frozenset[str] | None
    #: Purposes the caller may state; None = every purpose.
    purposes: frozenset[str] | None
    #: How the caller reaches content: BY_PURPOSE (its purposes and categories, under
    #: the catalog) or UNDER_GRANT (only through RPCs bound to a live support grant).
    content: Content = Content.BY_PURPOSE

    def __post_init__(self) -> None:
        check_rpcs(self.rpcs, self.content)

    def may_call(self, service: str, method: str) -> bool:
        # An RPC the table does not declare is callable by no one, wildcard or not.
        if declared(service, method) is None:
            return False
        return f"{service}.{method}" in self.rpcs or f"{service}.*" in self.rpcs


#: The ways a caller may reach content (``content`` in the policy file).
CONTENT_ACCESS = (Content.BY_PURPOSE, Content.UNDER_GRANT)
#: What an UNDER_GRANT caller's RPCs may return: nothing, or content under a grant.
_UNDER_GRANT_ALLOWS = frozenset({Content.NONE, Content.UNDER_GRANT})


def check_rpcs(rpcs: frozenset[str], content: Content) -> None:
    """Every name is a declared RPC (or a declared service's ``*``), and an UNDER_GRANT
    caller gets no RPC that returns content any other way.

    Raises:
        CallerPolicyError: naming the offending RPCs (names from vault.api.rpcs only).
    """
    if content not in CONTENT_ACCESS:
        raise CallerPolicyError(
            f"content: one of {', '.join(repr(c.value) for c in CONTENT_ACCESS)}"
        )
    unknown = sorted(r for r in rpcs if not matching(r))
    if unknown:
        raise CallerPolicyError(f"rpcs: not RPCs of the oubli API: {unknown}")
    if content is Content.UNDER_GRANT:
        given = {rpc for r in rpcs for rpc in matching(r)}
        outside = sorted(rpc.name for rpc in given if rpc.content not in _UNDER_GRANT_ALLOWS)
        if outside:
            raise CallerPolicyError(
                'rpcs: a caller with content = "under-grant" reaches content only through '
                f"RPCs bound to a support grant; these return it otherwise: {outside}"
            )


@functools.lru_cache(maxsize=256)
def rpc_name(full_method: str) -> tuple[str, str]:
    """'/oubli.v1.RecordService/GetRecord' -> ('RecordService', 'GetRecord'); cached
    (every call asks, several times, for one of a few dozen names)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service.rsplit(".", 1)[-1], method


@dataclass(frozen=True, slots=True)
class CallerPolicy:
    callers: Mapping[str, CallerRule]

    def rule(self, caller: str) -> CallerRule:
        try:
            return self.callers[caller]
        except KeyError:
            raise PermissionDenied("UNKNOWN_CALLER", "the caller has no policy") from None

    def check_rpc(self, caller: str, full_method: str) -> CallerRule:
        rule = self.rule(caller)
        service, method = rpc_name(full_method)
        if not rule.may_call(service, method):
            raise PermissionDenied(
                "RPC_NOT_ALLOWED",
                f"caller {caller} may not call {service}.{method}",
                caller=caller,
                rpc=f"{service}.{method}",
            )
        return rule

    @staticmethod
    def check_data(rule: CallerRule, category: str | None, purpose: str | None) -> None:
        if category and rule.categories is not None and category not in rule.categories:
            raise PermissionDenied(
                "CATEGORY_NOT_ALLOWED_FOR_CALLER",
                f"caller {rule.name} may not touch category {category}",
                caller=rule.name,
                category=category,
            )
        if purpose and rule.purposes is not None and purpose not in rule.purposes:
            raise PermissionDenied(
                "PURPOSE_NOT_ALLOWED_FOR_CALLER",
                f"caller {rule.name} may not read for purpose {purpose}",
                caller=rule.name,
                purpose=purpose,
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> CallerPolicy:
        raw = data.get("callers")
        if not isinstance(raw, dict) or not raw:
            raise CallerPolicyError(f"{source}: needs a non-empty [callers] table")
        unknown_top = set(data) - {"callers"}
        if unknown_top:
            raise CallerPolicyError(f"{source}: unknown keys {sorted(unknown_top)}")
        return cls(
            {name: _rule(name, spec, f"{source}: callers.{name}") for name, spec in raw.items()}
        )

    @classmethod
    def load(cls, path: Path | None = None) -> CallerPolicy:
        if path is None:
            text = resources.files("vault.access").joinpath("default_callers.toml").read_text()
            source = "default_callers.toml"
        else:
            try:
                text = path.read_text()
            except OSError as e:
                raise CallerPolicyError(f"{path}: cannot read ({e.strerror})") from e
            source = str(path)
        try:
            return cls.from_mapping(tomllib.loads(text), source)
        except tomllib.TOMLDecodeError as e:
            raise CallerPolicyError(f"{source}: invalid TOML ({e})") from e


def _names(value: Any, where: str) -> frozenset[str] | None:
    if value == "*":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CallerPolicyError(f'{where}: must be a list of names or "*"')
    return frozenset(value)


def _rule(name: str, spec: Any, where: str) -> CallerRule:
    if not CALLER_NAME.fullmatch(name):
        raise CallerPolicyError(f"{where}: caller names match [a-z][a-z0-9-]{{0,63}}")
    if not isinstance(spec, dict):
        raise CallerPolicyError(f"{where}: must be a table")
    unknown = set(spec) - {"description", "rpcs", "categories", "purposes", "content"}
    if unknown:
        raise CallerPolicyError(f"{where}: unknown keys {sorted(unknown)}")
    rpcs = spec.get("rpcs", [])
    if not isinstance(rpcs, list) or not all(
        isinstance(r, str) and _RPC.fullmatch(r) for r in rpcs
    ):
        raise CallerPolicyError(f'{where}.rpcs: a list of "Service.Method" or "Service.*"')
    content = spec.get("content", Content.BY_PURPOSE.value)
    if content not in {c.value for c in CONTENT_ACCESS}:
        raise CallerPolicyError(f'{where}.content: "by-purpose" (the default) or "under-grant"')
    categories = _names(spec.get("categories", []), f"{where}.categories")
    purposes = _names(spec.get("purposes", []), f"{where}.purposes")
    try:
        return CallerRule(name, frozenset(rpcs), categories, purposes, Content(content))
    except CallerPolicyError as e:
        raise CallerPolicyError(f"{where}.{e}") from None
