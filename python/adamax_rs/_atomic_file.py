"""Replacing a file atomically, as an editor saves it.

The new content goes to a temporary file in the same folder, which is flushed, synced to
disk and renamed over the target, and the rename itself is synced: a crash at any moment
leaves either the old file or the new one, never a mix. Unlike ``tempfile.mkstemp`` (always
mode 0600), the temporary file is created the way ``open(path, "w")`` creates a file, so a
new file gets the mode the umask gives; a file that is replaced keeps its mode. A symbolic
link is followed: its target is replaced and the link stays.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["replace_file", "PathLike"]

PathLike = Union[str, "os.PathLike[str]"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    for _ in range(100):
        # The name is cut so that the temporary one fits where the file's own does (255 bytes
        # on most file systems): a long but valid name must still save.
        short = name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")
        temporary = folder / f".{short}.{secrets.token_hex(4)}.tmp"
        try:
            # 0o666 as open() uses: the umask (and a default ACL) decide the mode, as they
            # would for any file the user creates.
            return os.open(temporary, _CREATE, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {folder / name}")


def _sync_folder(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a rename cannot be synced through a directory handle
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def replace_file(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Make ``path`` hold what ``write(file)`` writes, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace. If it is a symbolic link, the file it points to is
        replaced (created, for a dangling link) and the link is left as it is.
    write : callable
        Writes the whole new content to the binary file it is given. If it raises, nothing
        changes and the temporary file is removed.
    """
    target = Path(os.path.realpath(os.fspath(path)))
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    try:
        handle, temporary = _create_temporary(target.parent, target.name)
    except OSError as error:
        if error.errno is None:
            raise
        # Named as open(path, "w") would name it: the caller never asked for the temporary
        # file, whose name would only puzzle them (a missing or read-only folder, say).
        raise type(error)(error.errno, error.strerror, os.fspath(path)) from None
    try:
        with os.fdopen(handle, "wb") as file:
            if mode is not None:
                os.chmod(temporary, mode)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(target.parent)
