"""The policy catalog: categories, their fields, purposes, legal basis and retention.

Loaded from a TOML file (``vault/default_catalog.toml`` unless configured) and
validated at start-up; a bad catalog stops the server with a message naming the file
and the offending key. Every rule in it is enforced by the server (vault.usecases.purpose_check,
vault.usecases.retention), never left to callers.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from vault.errors import InvalidArgument
from vault.limits import CATEGORY_NAME, FIELD_NAME


class Cardinality(StrEnum):
    #: Profile categories hold one record per subject (identity, contact, ...).
    ONE = "one"
    #: Event categories hold many (invoices, tickets, access logs, ...).
    MANY = "many"


class LegalBasis(StrEnum):
    CONTRACT = "contract"
    CONSENT = "consent"
    LEGAL_OBLIGATION = "legal_obligation"
    LEGITIMATE_INTEREST = "legitimate_interest"


class RetentionKind(StrEnum):
    #: Kept while the account lives; erased on request or N months after closure.
    ACCOUNT = "account"
    #: Each record expires ``months`` after its creation (technical logs: 12).
    ROLLING = "rolling"
    #: Each record expires ``months`` after an event recorded later (ticket resolved).
    AFTER_EVENT = "after_event"
    #: Survives erasure: kept until ``months`` after account closure (accounting).
    LEGAL_HOLD = "legal_hold"


@dataclass(frozen=True, slots=True)
class RetentionRule:
    kind: RetentionKind = RetentionKind.ACCOUNT
    months: int = 0
    event: str = ""

    def describe(self) -> str:
        if self.kind is RetentionKind.ROLLING:
            return f"{self.months} months after creation"
        if self.kind is RetentionKind.AFTER_EVENT:
            return f"{self.months} months after the record's '{self.event}' event"
        if self.kind is RetentionKind.LEGAL_HOLD:
            return f"{self.months} months after account closure, also after an erasure request"
        return "while the account is open; erased on request or after closure"


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    description: str = ""
    #: A consent the subject must have granted for this purpose (e.g. marketing).
    consent: str = ""
    #: The subject may object to it (right to object: legitimate interest, marketing).
    objectable: bool = False
    #: Still allowed while processing is restricted (e.g. legal claims).
    allowed_under_restriction: bool = False
    #: A data-subject right (access, portability): every category, whatever the state.
    subject_right: bool = False


#: Purposes every catalog has.
BUILTIN_PURPOSES = {
    "service": Purpose("service", "Provide the contracted service"),
    "access": Purpose("access", "Right of access: the subject's own copy", subject_right=True),
    "portability": Purpose(
        "portability", "Right to portability: export to the subject", subject_right=True
    ),
}


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    description: str
    fields: frozenset[str]
    cardinality: Cardinality
    purposes: frozenset[str] = frozenset({"service"})
    legal_basis: LegalBasis = LegalBasis.CONTRACT
    #: A consent needed to store or read this category at all (card numbers, location).
    consent: str = ""
    #: Declared recipients (who the data may be disclosed to).
    recipients: tuple[str, ...] = ()
    retention: RetentionRule = field(default_factory=RetentionRule)
    #: For legal-hold categories: purposes still allowed after an erasure request.
    purposes_after_erasure: frozenset[str] = frozenset()
    #: DeleteRecord and UpdateRecord of this category erase the old value everywhere,
    #: database backups included: the subject moves to a new key and the old one is
    #: destroyed (vault.usecases.rekey). Costs a new KMS key and re-encrypting all the
    #: subject's records on every such call.
    erase_on_change: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    #: Accounts closed without a request are erased this long after closure (seed 003).
    closed_account_erasure_months: int = 6
    #: Erasure requests are carried out within this many days (seed 003).
    erasure_deadline_days: int = 30
    #: Rights requests are answered within this many days (seed 000).
    rights_request_answer_days: int = 30


class CatalogError(ValueError):
    """The catalog file is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class Catalog:
    categories: Mapping[str, Category]
    purposes: Mapping[str, Purpose] = field(default_factory=lambda: dict(BUILTIN_PURPOSES))
    settings: Settings = field(default_factory=Settings)

    def category(self, name: str) -> Category:
        if not CATEGORY_NAME.fullmatch(name):
            raise InvalidArgument("category", "category malformed: expected [a-z][a-z0-9_]{0,63}")
        try:
            return self.categories[name]
        except KeyError:
            # Not echoed: an unknown name is caller input, which could be anything.
            raise InvalidArgument("category", "unknown category (see the policy catalog)") from None

    def purpose(self, name: str) -> Purpose:
        if not name:
            raise InvalidArgument("purpose", "a purpose is required for every read")
        try:
            return self.purposes[name]
        except KeyError:
            raise InvalidArgument("purpose", "unknown purpose (see the policy catalog)") from None

    @property
    def consents(self) -> frozenset[str]:
        """Every consent name the catalog relies on."""
        names = {p.consent for p in self.purposes.values() if p.consent}
        names |= {c.consent for c in self.categories.values() if c.consent}
        return frozenset(names)

    @property
    def legal_hold_categories(self) -> dict[str, Category]:
        """The categories an erasure keeps under a legal hold, by name (in name order)."""
        return {
            name: spec
            for name, spec in sorted(self.categories.items())
            if spec.retention.kind is RetentionKind.LEGAL_HOLD
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> Catalog:
        _no_unknown_keys(data, {"settings", "purposes", "categories", "title"}, source)
        purposes = dict(BUILTIN_PURPOSES)
        raw_purposes = data.get("purposes", {})
        if not isinstance(raw_purposes, dict):
            raise CatalogError(f"{source}: [purposes] must be a table")
        for name, spec in raw_purposes.items():
            if name in BUILTIN_PURPOSES:
                raise CatalogError(f"{source}: purposes.{name} is built in and cannot be redefined")
            purposes[name] = _purpose(name, spec, f"{source}: purposes.{name}")
        raw = data.get("categories")
        if not isinstance(raw, dict) or not raw:
            raise CatalogError(f"{source}: needs a non-empty [categories] table")
        categories = {
            name: _category(name, spec, f"{source}: categories.{name}", purposes)
            for name, spec in raw.items()
        }
        return cls(categories, purposes, _settings(data.get("settings", {}), source))

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        if path is None:
            text = resources.files("vault").joinpath("default_catalog.toml").read_text()
            source = "default_catalog.toml"
        else:
            try:
                text = path.read_text()
            except OSError as e:
                raise CatalogError(f"{path}: cannot read ({e.strerror})") from e
            source = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CatalogError(f"{source}: invalid TOML ({e})") from e
        return cls.from_mapping(data, source)


def _no_unknown_keys(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    # A misspelt key must not silently fall back to a default rule.
    unknown = set(spec) - allowed
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")


def _name_list(value: Any, where: str, allowed: Mapping[str, Any] | None = None) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: must be a list of names")
    if allowed is not None:
        for name in value:
            if name not in allowed:
                raise CatalogError(f"{where}: {name!r} is not a declared purpose")
    return frozenset(value)


def _purpose(name: str, spec: Any, where: str) -> Purpose:
    if not CATEGORY_NAME.fullmatch(name):
        raise CatalogError(f"{where}: name must match [a-z][a-z0-9_]{{0,63}}")
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: must be a table")
    _no_unknown_keys(
        spec, {"description", "consent", "objectable", "allowed_under_restriction"}, where
    )
    consent = spec.get("consent", "")
    if consent and not (isinstance(consent, str) and CATEGORY_NAME.fullmatch(consent)):
        raise CatalogError(f"{where}.consent: must match [a-z][a-z0-9_]*")
    for flag in ("objectable", "allowed_under_restriction"):
        if not isinstance(spec.get(flag, False), bool):
            raise CatalogError(f"{where}.{flag}: must be true or false")
    return Purpose(
        name,
        str(spec.get("description", "")),
        consent,
        spec.get("objectable", False),
        spec.get("allowed_under_restriction", False),
    )


def _retention(spec: Any, where: str) -> RetentionRule:
    if spec is None:
        return RetentionRule()
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: must be a table")
    _no_unknown_keys(spec, {"rule", "months", "years", "event"}, where)
    try:
        kind = RetentionKind(spec.get("rule", "account"))
    except ValueError:
        allowed = ", ".join(k.value for k in RetentionKind)
        raise CatalogError(f"{where}.rule: must be one of {allowed}") from None
    raw_months, raw_years = spec.get("months", 0), spec.get("years", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (raw_months, raw_years)):
        raise CatalogError(f"{where}: months/years must be integers")
    months = raw_months + 12 * raw_years
    event = spec.get("event", "")
    if kind is RetentionKind.ACCOUNT:
        if months or event:
            raise CatalogError(f"{where}: rule 'account' takes no months, years or event")
        return RetentionRule()
    if not 0 < months <= 1200:
        raise CatalogError(f"{where}: rule '{kind.value}' needs months or years > 0")
    if (kind is RetentionKind.AFTER_EVENT) != bool(event):
        raise CatalogError(f"{where}.event: required by 'after_event' and only there")
    if event and not (isinstance(event, str) and CATEGORY_NAME.fullmatch(event)):
        raise CatalogError(f"{where}.event: must match [a-z][a-z0-9_]*")
    return RetentionRule(kind, months, event)


def _category(name: str, spec: Any, where: str, purposes: Mapping[str, Purpose]) -> Category:
    if not CATEGORY_NAME.fullmatch(name):
        raise CatalogError(f"{where}: name must match [a-z][a-z0-9_]{{0,63}}")
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: must be a table")
    _no_unknown_keys(
        spec,
        {
            "description",
            "cardinality",
            "fields",
            "legal_basis",
            "purposes",
            "consent",
            "recipients",
            "retention",
            "purposes_after_erasure",
            "erase_on_change",
        },
        where,
    )
    fields = spec.get("fields")
    if not isinstance(fields, list) or not fields:
        raise CatalogError(f"{where}.fields: must be a non-empty list")
    for field_name in fields:
        if not isinstance(field_name, str) or not FIELD_NAME.fullmatch(field_name):
            raise CatalogError(f"{where}.fields: {field_name!r} must match [a-z][a-z0-9_]*")
    if len(set(fields)) != len(fields):
        raise CatalogError(f"{where}.fields: duplicate field names")
    try:
        cardinality = Cardinality(spec.get("cardinality", "many"))
    except ValueError:
        raise CatalogError(f"{where}.cardinality: must be 'one' or 'many'") from None
    try:
        legal_basis = LegalBasis(spec.get("legal_basis", "contract"))
    except ValueError:
        allowed = ", ".join(b.value for b in LegalBasis)
        raise CatalogError(f"{where}.legal_basis: must be one of {allowed}") from None
    category_purposes = _name_list(spec.get("purposes", ["service"]), f"{where}.purposes", purposes)
    consent = spec.get("consent", "")
    if consent and not (isinstance(consent, str) and CATEGORY_NAME.fullmatch(consent)):
        raise CatalogError(f"{where}.consent: must match [a-z][a-z0-9_]*")
    if legal_basis is LegalBasis.CONSENT and not consent:
        raise CatalogError(f"{where}.consent: legal basis 'consent' names the consent needed")
    retention = _retention(spec.get("retention"), f"{where}.retention")
    after_erasure = _name_list(
        spec.get("purposes_after_erasure", []), f"{where}.purposes_after_erasure", purposes
    )
    if after_erasure and retention.kind is not RetentionKind.LEGAL_HOLD:
        raise CatalogError(f"{where}.purposes_after_erasure: only for 'legal_hold' retention")
    if not after_erasure <= category_purposes:
        raise CatalogError(f"{where}.purposes_after_erasure: must be among the purposes")
    recipients = spec.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise CatalogError(f"{where}.recipients: must be a list of names")
    erase_on_change = spec.get("erase_on_change", False)
    if not isinstance(erase_on_change, bool):
        raise CatalogError(f"{where}.erase_on_change: must be true or false")
    return Category(
        name=name,
        description=str(spec.get("description", "")),
        fields=frozenset(fields),
        cardinality=cardinality,
        purposes=category_purposes,
        legal_basis=legal_basis,
        consent=consent,
        recipients=tuple(recipients),
        retention=retention,
        purposes_after_erasure=after_erasure,
        erase_on_change=erase_on_change,
    )


def _settings(spec: Any, source: str) -> Settings:
    if not isinstance(spec, dict):
        raise CatalogError(f"{source}: [settings] must be a table")
    defaults = Settings()
    values: dict[str, int] = {}
    for key in (
        "closed_account_erasure_months",
        "erasure_deadline_days",
        "rights_request_answer_days",
    ):
        value = spec.get(key, getattr(defaults, key))
        if not isinstance(value, int) or value <= 0:
            raise CatalogError(f"{source}: settings.{key} must be a positive integer")
        values[key] = value
    unknown = set(spec) - set(values)
    if unknown:
        raise CatalogError(f"{source}: settings has unknown keys {sorted(unknown)}")
    return Settings(**values)
