"""Helpers for tests about file modes: a umask for the block, the modes of a tree."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask (inherited by its children) for the block, then restored."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def open_to_others(root: Path) -> dict[str, str]:
    """Every directory and file under ``root`` (``root`` included) that is not 0700 /
    0600, by path relative to ``root``, with its mode: {} when all are private."""
    found = {}
    for path in (root, *root.rglob("*")):
        wanted = 0o700 if path.is_dir() else 0o600
        if mode(path) != wanted:
            found[str(path.relative_to(root))] = f"{mode(path):04o}"
    return found
