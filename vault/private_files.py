"""Files and directories only their owner can open: 0700 directories, 0600 files.

What oubli writes to disk is personal data (the database, an export), keys (the local
keystore) or credentials (token hashes, dev tokens), so every directory it creates is
0700 and every file 0600, whatever the process umask: the modes are set explicitly,
never left to the umask. SQLite gives a database's ``-wal`` and ``-shm`` files the mode
of the database file, so creating the database file 0600 before SQLite opens it covers
its journals too.

Files and directories that exist already and are open to the group or to others are
tightened (:func:`tighten`: group and other bits removed) when they are oubli's own —
the data directory and the files in it — and the change is logged; when they cannot be
tightened (another user owns them), oubli refuses to start (:class:`OpenToOthers`).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger("oubli.files")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: Permission bits that let anyone but the owner in.
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


class OpenToOthers(ValueError):
    """A file or directory oubli keeps private is open to other users and cannot be
    tightened; the message names it, its mode and the command that fixes it."""


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parent as 0700 directories; one that exists is
    left as it is (see :func:`tighten` for oubli's own). Returns ``path``."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, not ours to chmod
        os.chmod(directory, PRIVATE_DIR_MODE)  # the umask may have taken owner bits
    return path


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file keeps
    its content and mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` as a 0600 file, atomically: a temporary file in
    the same directory, renamed over it (a symlink at ``path`` is replaced, not
    followed; a reader never sees half a file)."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def tighten(paths: Iterable[Path]) -> None:
    """Take the group and other permission bits off each of ``paths`` that exists
    (a 0755 directory becomes 0700, a 0644 file 0600), logging each change. Symlinks
    are followed.

    Raises:
        OpenToOthers: a path is open to others and this process may not change its
            mode (another user owns it).
    """
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & _OTHERS:
            continue
        private = mode & ~_OTHERS
        try:
            os.chmod(path, private)
        except PermissionError:
            raise OpenToOthers(
                f"{path} is open to other users (mode {mode:04o}) and this process cannot "
                f"restrict it: as its owner, run chmod go= {path}"
            ) from None
        log.warning("file_mode_tightened", path=str(path), old=f"{mode:04o}", new=f"{private:04o}")
