"""The policy catalog: the shipped default loads, bad catalogs say where they are bad."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault.catalog import Cardinality, Catalog, CatalogError
from vault.errors import InvalidArgument

EXPECTED_CATEGORIES = {
    "identity",
    "contact",
    "billing",
    "payment",
    "credentials",
    "technical_logs",
    "usage",
    "support",
    "location",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_catalog_loads() -> None:
    catalog = Catalog.load()
    assert set(catalog.categories) >= EXPECTED_CATEGORIES
    for name, category in catalog.categories.items():
        assert category.name == name
        assert category.fields
        assert isinstance(category.cardinality, Cardinality)


def test_default_catalog_shapes() -> None:
    catalog = Catalog.load()
    assert catalog.category("identity").cardinality is Cardinality.ONE
    assert catalog.category("contact").cardinality is Cardinality.ONE
    assert catalog.category("billing").cardinality is Cardinality.MANY
    assert catalog.category("support").cardinality is Cardinality.MANY
    assert "email" in catalog.category("contact").fields
    assert "card_number" in catalog.category("payment").fields


def test_erase_on_change_categories_of_the_default_catalog() -> None:
    """Identity documents, cards, payment methods and credentials: a changed or deleted
    value must not survive in database copies (docs/keys.md, record-level erasure)."""
    catalog = Catalog.load()
    erased = {name for name, spec in catalog.categories.items() if spec.erase_on_change}
    assert erased == {"identity", "payment", "payment_method", "credentials"}


def test_erase_on_change_defaults_to_false(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[categories.a]\nfields = ["x"]\n'
        '[categories.b]\nfields = ["x"]\nerase_on_change = true\n'
        '[categories.c]\nfields = ["x"]\nerase_on_change = false\n',
    )
    catalog = Catalog.load(path)
    assert [catalog.category(n).erase_on_change for n in "abc"] == [False, True, False]


def test_catalog_from_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[categories.profile]
description = "a profile"
cardinality = "one"
fields = ["name", "nickname"]

[categories.events]
fields = ["what"]
""",
    )
    catalog = Catalog.load(path)
    assert set(catalog.categories) == {"profile", "events"}
    assert catalog.category("profile").fields == frozenset({"name", "nickname"})
    assert catalog.category("profile").description == "a profile"
    assert catalog.category("events").cardinality is Cardinality.MANY  # the default


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("this is = not [ toml", "invalid TOML", id="not-toml"),
        pytest.param('title = "no categories"\n', "[categories]", id="missing-categories"),
        pytest.param("categories = {}\n", "[categories]", id="empty-categories"),
        pytest.param('categories = "identity"\n', "[categories]", id="categories-not-table"),
        pytest.param(
            '[categories.Bad-Name]\nfields = ["a"]\n', "categories.Bad-Name", id="bad-name"
        ),
        pytest.param(
            '[categories.1st]\nfields = ["a"]\n', "categories.1st", id="name-starts-with-digit"
        ),
        pytest.param('[categories]\nidentity = "x"\n', "categories.identity", id="not-a-table"),
        pytest.param(
            "[categories.identity]\nfields = []\n", "categories.identity.fields", id="empty-fields"
        ),
        pytest.param(
            '[categories.identity]\ncardinality = "one"\n',
            "categories.identity.fields",
            id="missing-fields",
        ),
        pytest.param(
            '[categories.identity]\nfields = "name"\n',
            "categories.identity.fields",
            id="fields-not-a-list",
        ),
        pytest.param(
            '[categories.identity]\nfields = ["name", "name"]\n',
            "categories.identity.fields",
            id="duplicate-fields",
        ),
        pytest.param(
            '[categories.identity]\nfields = ["name"]\ncardinality = "several"\n',
            "categories.identity.cardinality",
            id="bad-cardinality",
        ),
        pytest.param(
            '[categories.identity]\nfields = ["Given Name"]\n',
            "categories.identity.fields",
            id="bad-field-name",
        ),
        pytest.param(
            "[categories.identity]\nfields = [1]\n",
            "categories.identity.fields",
            id="field-not-a-string",
        ),
        pytest.param(
            '[categories.identity]\nfields = ["_hidden"]\n',
            "categories.identity.fields",
            id="field-starts-with-underscore",
        ),
        pytest.param(
            '[categories.identity]\nfields = ["name"]\nerase_on_change = "yes"\n',
            "categories.identity.erase_on_change",
            id="erase-on-change-not-a-bool",
        ),
    ],
)
def test_invalid_catalog(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        Catalog.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message


def test_invalid_second_category_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[categories.good]\nfields = ["a"]\n\n[categories.broken]\nfields = ["a", "a"]\n',
    )
    with pytest.raises(CatalogError) as caught:
        Catalog.load(path)
    assert "categories.broken.fields" in str(caught.value)
    assert "categories.good" not in str(caught.value)


def test_missing_catalog_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(CatalogError) as caught:
        Catalog.load(path)
    assert str(path) in str(caught.value)


def test_from_mapping_names_its_source() -> None:
    with pytest.raises(CatalogError) as caught:
        Catalog.from_mapping({"categories": {"x": {"fields": []}}}, "inline")
    assert str(caught.value).startswith("inline: categories.x.fields")


@pytest.mark.parametrize("name", ["no_such_category", "zz"])
def test_unknown_category_is_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Catalog.load().category(name)
    assert caught.value.field == "category"
    assert "unknown" in str(caught.value)


@pytest.mark.parametrize(
    "name",
    ["", "Identity", "1identity", "_identity", "iden tity", "identity\n", "a" * 65, "contact;"],
)
def test_malformed_category_is_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Catalog.load().category(name)
    assert caught.value.field == "category"
    assert "malformed" in str(caught.value)
    # A malformed name could be anything the caller typed: it is not echoed.
    if name.strip():
        assert name not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param(
            '[categories.c]\nfields = ["a"]\nretension = { rule = "rolling", months = 1 }\n',
            "unknown keys ['retension']",
            id="misspelt-category-key",
        ),
        pytest.param(
            '[categories.c]\nfields = ["a"]\nretention = { rule = "rolling", monts = 1 }\n',
            "unknown keys ['monts']",
            id="misspelt-retention-key",
        ),
        pytest.param(
            '[categories.c]\nfields = ["a"]\nretention = { rule = "rolling", months = "12" }\n',
            "months/years must be integers",
            id="months-not-integer",
        ),
        pytest.param(
            '[purposes.access]\ndescription = "mine"\n[categories.c]\nfields = ["a"]\n',
            "purposes.access is built in",
            id="builtin-purpose-redefined",
        ),
        pytest.param('[categoriez.c]\nfields = ["a"]\n', "unknown keys", id="unknown-table"),
    ],
)
def test_catalog_typos_are_errors_not_defaults(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(CatalogError) as raised:
        Catalog.load(write(tmp_path, text))
    assert key in str(raised.value)
