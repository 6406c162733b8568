"""The policy catalog: which categories exist and which fields each may hold.

Loaded from a TOML file (``vault/default_catalog.toml`` unless configured) and
validated at start-up; a bad catalog stops the server with a clear message.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    description: str
    fields: frozenset[str]
    cardinality: Cardinality


class CatalogError(ValueError):
    """The catalog file is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class Catalog:
    categories: Mapping[str, Category]

    def category(self, name: str) -> Category:
        if not CATEGORY_NAME.fullmatch(name):
            raise InvalidArgument("category", "category malformed: expected [a-z][a-z0-9_]{0,63}")
        try:
            return self.categories[name]
        except KeyError:
            # Not echoed: an unknown name is caller input, which could be anything.
            raise InvalidArgument("category", "unknown category (see the policy catalog)") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> Catalog:
        raw = data.get("categories")
        if not isinstance(raw, dict) or not raw:
            raise CatalogError(f"{source}: needs a non-empty [categories] table")
        categories: dict[str, Category] = {}
        for name, spec in raw.items():
            where = f"{source}: categories.{name}"
            if not CATEGORY_NAME.fullmatch(name):
                raise CatalogError(f"{where}: name must match [a-z][a-z0-9_]{{0,63}}")
            if not isinstance(spec, dict):
                raise CatalogError(f"{where}: must be a table")
            fields = spec.get("fields")
            if not isinstance(fields, list) or not fields:
                raise CatalogError(f"{where}.fields: must be a non-empty list")
            for field in fields:
                if not isinstance(field, str) or not FIELD_NAME.fullmatch(field):
                    raise CatalogError(f"{where}.fields: {field!r} must match [a-z][a-z0-9_]*")
            if len(set(fields)) != len(fields):
                raise CatalogError(f"{where}.fields: duplicate field names")
            try:
                cardinality = Cardinality(spec.get("cardinality", "many"))
            except ValueError:
                raise CatalogError(f"{where}.cardinality: must be 'one' or 'many'") from None
            categories[name] = Category(
                name=name,
                description=str(spec.get("description", "")),
                fields=frozenset(fields),
                cardinality=cardinality,
            )
        return cls(categories)

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
