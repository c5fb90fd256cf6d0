"""The data directory's modes: 0700 for the directory, 0600 for the secrets and the database.

The directory holds the secret key, the encryption key, the first admin's password and (in the
embedded mode) the SQLite database, so no other user of the machine may read any of it; build
sandboxes run as another user and must not either (docs/security.md). Modes are set when the
files are created and repaired at every start (settings import, and each new SQLite
connection), so a copy or a restore with a loose umask heals itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# The generated secrets (deployer/settings.py, ensure_admin).
SECRET_FILES = ("secret_key", "encryption.key", "admin-password.txt")
# SQLite keeps its write-ahead log and shared memory beside the database.
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")


class DataDirError(Exception):
    """A mode could not be set (the file belongs to another user): says what to run."""


def _ensure_mode(path: Path, mode: int) -> bool:
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return False
    if path.is_symlink() or current == mode:
        return False
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise DataDirError(
            f"{path} has mode {current:04o} and cannot be changed to {mode:04o} "
            f"({exc.strerror}): run `chmod {mode:o} {path}` as its owner"
        ) from None
    return True


def secure_database(database: Path) -> list[Path]:
    """Set the SQLite database ``database`` and its companion files to 0600; answers those
    that were changed."""
    changed = []
    for suffix in DATABASE_SUFFIXES:
        path = database.with_name(database.name + suffix)
        if _ensure_mode(path, FILE_MODE):
            changed.append(path)
    return changed


def secure_data_dir(data_dir: Path, databases: tuple[Path, ...] = ()) -> list[Path]:
    """Set ``data_dir`` to 0700 and the secret files and ``databases`` in it to 0600.

    Answers the paths whose mode was changed; raises DataDirError when one cannot be.
    """
    changed = [data_dir] if _ensure_mode(data_dir, DIRECTORY_MODE) else []
    for name in SECRET_FILES:
        if _ensure_mode(data_dir / name, FILE_MODE):
            changed.append(data_dir / name)
    for database in databases:
        changed += secure_database(database)
    return changed
