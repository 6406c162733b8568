"""docs/architecture.md's module map names only paths that exist, and every module of
vault/ and kms/ is on it: the map stays true as the code moves."""

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
