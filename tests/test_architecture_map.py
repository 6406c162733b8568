"""docs/architecture.md's module map names only paths that exist, every module of vault/ and
kms/ is on it, and the layout keeps what it promises: each promise in the file named for
it, SQL only under storage, one erasure path, one vocabulary."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "architecture.md"
#: Column where a line's description starts; a name sits left of it.
_ENTRY = re.compile(r"^( *)(\S+)(?: {2,}|$)")


def mapped_paths() -> list[Path]:
    """Every path of the map's tree: top-level entries, and entries indented under a
    directory (two spaces per level); description lines (indented past the names) are
    skipped."""
    text = MAP.read_text()
    block = text.split("## Modules", 1)[1].split("```", 2)[1]
    parents: list[str] = []
    found: list[Path] = []
    for line in block.splitlines():
        match = _ENTRY.match(line)
        if not match or len(match[1]) > 2 * len(parents) or len(match[1]) % 2:
            continue  # a description's continuation
        depth = len(match[1]) // 2
        name = match[2]
        parents = parents[:depth]
        found.append(Path(*parents, name.rstrip("/")))
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
    return found


def test_every_path_the_map_names_exists() -> None:
    paths = mapped_paths()
    assert len(paths) > 50  # the parser read the tree, not nothing
    missing = [str(p) for p in paths if not (ROOT / p).exists()]
    assert missing == []


def test_every_module_of_the_service_is_on_the_map() -> None:
    mapped = {str(p) for p in mapped_paths()}
    modules = [
        str(path.relative_to(ROOT))
        for package in ("vault", "kms")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "__init__.py" and "migrations" not in path.parts
    ]
    assert modules  # the glob found the packages
    assert [m for m in modules if m not in mapped] == []


#: Each promise, the file named for it, and a definition there that keeps it.
HOMES = {
    "erasure": ("vault/usecases/erasure.py", "def shred_many("),
    "key destruction": ("vault/crypto/key_destruction.py", "def destroy_key("),
    "retention": ("vault/usecases/retention.py", "class RetentionJob"),
    "consent": ("vault/usecases/consent.py", "def withdraw("),
    "purpose check": ("vault/usecases/purpose_check.py", "def authorize_read("),
    "audit append": ("vault/audit/chain.py", "def append("),
    "envelope": ("vault/crypto/envelope.py", "class RecordCipher"),
}


def test_each_promise_lives_in_the_file_named_for_it() -> None:
    for promise, (path, definition) in HOMES.items():
        assert definition in (ROOT / path).read_text(), promise


def _vault_sources() -> list[Path]:
    sources = sorted((ROOT / "vault").rglob("*.py"))
    assert len(sources) > 50
    return sources


def test_sql_only_under_storage() -> None:
    """The database seam: no module outside vault/storage/ imports SQLAlchemy or Alembic."""
    storage = ROOT / "vault" / "storage"
    outside = [
        str(path.relative_to(ROOT))
        for path in _vault_sources()
        if storage not in path.parents
        and re.search(r"^\s*(from|import) (sqlalchemy|alembic)\b", path.read_text(), re.M)
    ]
    assert outside == []


def test_the_shred_finish_and_the_key_destruction_exist_once() -> None:
    """One erasure path: one finish transaction, one destroy-evict-translate helper."""
    for definition in ("def finish_shreds(", "def destroy_key(", "def shred_many("):
        homes = [p for p in _vault_sources() if definition in p.read_text()]
        assert len(homes) == 1, (definition, homes)
    texts = "".join(p.read_text() for p in _vault_sources())
    assert "def finish_shred(" not in texts and "def _finish_shred(" not in texts


def test_states_and_schemes_are_spelled_once() -> None:
    """The vocabulary's values appear as literals only in vault/vocabulary.py (and the
    schema's migrations, which must not change with it)."""
    literal = re.compile(r"""["'](shredding|shredded)["']""")
    spelled = [
        str(path.relative_to(ROOT))
        for path in _vault_sources()
        if path.name != "vocabulary.py"
        and "migrations" not in path.parts
        and literal.search(path.read_text())
    ]
    assert spelled == []
