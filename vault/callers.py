"""Who may call what: the per-caller policy (least privilege, seed 000).

A TOML file maps each caller — named by its client certificate's common name (mTLS) or
by its bearer token — to the RPCs it may call, and for record content to the categories
and purposes it may use. Checked on every call, before the domain runs; the domain's
own purpose rules (vault.policy) apply on top.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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

    def may_call(self, service: str, method: str) -> bool:
        return f"{service}.{method}" in self.rpcs or f"{service}.*" in self.rpcs


def rpc_name(full_method: str) -> tuple[str, str]:
    """'/oubli.v1.RecordService/GetRecord' -> ('RecordService', 'GetRecord')."""
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
            text = resources.files("vault").joinpath("default_callers.toml").read_text()
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
    unknown = set(spec) - {"description", "rpcs", "categories", "purposes"}
    if unknown:
        raise CallerPolicyError(f"{where}: unknown keys {sorted(unknown)}")
    rpcs = spec.get("rpcs", [])
    if not isinstance(rpcs, list) or not all(
        isinstance(r, str) and _RPC.fullmatch(r) for r in rpcs
    ):
        raise CallerPolicyError(f'{where}.rpcs: a list of "Service.Method" or "Service.*"')
    return CallerRule(
        name,
        frozenset(rpcs),
        _names(spec.get("categories", []), f"{where}.categories"),
        _names(spec.get("purposes", []), f"{where}.purposes"),
    )
