"""Secrets and tokens kept in `.montra-hooks/`: created once, readable by their owner only, never through a link.

The folder sits in the working directory, which may be shared (a checkout on a multi-user
machine, a container volume). Whoever can write there could plant a symbolic link where a
secret is about to be written (the secret then lands in a file of their choosing) or read
(they then choose the secret). So the folder is opened once without following links and every
file is reached relative to it (`dir_fd`); files are written to a fresh random name with
`O_EXCL | O_NOFOLLOW` and put into place atomically, and read with `O_NOFOLLOW`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["PRIVATE_DIR", "load_or_create_private", "read_private"]

PRIVATE_DIR = Path(".montra-hooks")
"""Relative to the working directory, as `montra-events.db` is."""

# Not every platform has these; where one is missing, the checks on what was opened still apply.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_MAX_BYTES = 64 * 1024


def read_private(path: Path) -> str | None:
    """The text of a private file (stripped), or None when it or its folder does not exist yet."""
    try:
        folder = _open_folder(path.parent, create=False)
    except FileNotFoundError:
        return None
    try:
        return _read_at(folder, path)
    finally:
        os.close(folder)


def load_or_create_private(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """(value, created): read `path`, or write `make()` to it, readable by this user only.

    Its folder is created 0700 (an existing one of ours is tightened to 0700). A symbolic link at
    the folder or the file is refused with a `ConfigurationError` that names it, never followed.
    """
    folder = _open_folder(path.parent, create=True)
    try:
        existing = _read_at(folder, path)
        if existing:
            return existing, False
        value = make()
        # A random name: nobody can plant a link at it in advance, and O_EXCL | O_NOFOLLOW would refuse one anyway.
        temp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(value + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                # A link is a rename that never replaces: two processes starting at once agree on the first
                # value, and a link planted at the final name is left alone (FileExistsError), not followed.
                os.link(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except FileExistsError:
                existing = _read_at(folder, path)
                if existing:
                    return existing, False
                os.rename(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)  # an empty file: replace it
        finally:
            with contextlib.suppress(FileNotFoundError):  # gone when it was renamed into place
                os.unlink(temp, dir_fd=folder)
        os.fsync(folder)
        return value, True
    finally:
        os.close(folder)


def _open_folder(folder: Path, *, create: bool) -> int:
    if create:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    try:
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigurationError(
                f"{folder} is not a folder (a symbolic link or a file?): montra-hooks keeps secrets there and "
                "does not follow links. Remove it and start again."
            ) from e
        raise
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise ConfigurationError(
            f"{folder} belongs to another user: montra-hooks keeps secrets there. Remove it and start again."
        )
    if create and stat.S_IMODE(info.st_mode) != 0o700:
        os.fchmod(fd, 0o700)  # a folder made by an older version, or by hand: its secrets are ours alone
    return fd


def _read_at(folder: int, path: Path) -> str | None:
    try:
        fd = os.open(path.name, os.O_RDONLY | _NOFOLLOW, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigurationError(
                f"{path} is a symbolic link: montra-hooks does not follow links where it keeps secrets. "
                "Remove it and start again."
            ) from e
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigurationError(f"{path} is not a regular file: remove it and start again.")
        data = f.read(_MAX_BYTES)
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"{path} is not text: remove it and start again.") from e
