"""The local development secret: created by `serve` on loopback, used by trigger, replay and listen."""

from __future__ import annotations

import os
from pathlib import Path

from .verify import generate_secret

__all__ = ["DEV_SECRET_FILE", "load_dev_secret", "load_or_create_dev_secret", "make_private_dir", "secrets_from_env"]

DEV_SECRET_FILE = Path(".montra-hooks") / "dev-secret"
"""Relative to the working directory, as `montra-events.db` is."""


def make_private_dir(folder: Path) -> None:
    """Create `folder` (e.g. `.montra-hooks/`, which holds secrets and tokens) readable by this user only.

    Created 0700 whatever the umask; an existing folder is left as it is.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)  # mkdir's mode passes through the umask; chmod's does not


def secrets_from_env() -> list[str]:
    """Secrets from `MONTRA_HOOKS_SECRETS` (comma-separated), if set.

    Here, not only in `receiver.app`, so the CLI's senders find them without loading Starlette.
    """
    return [s.strip() for s in os.environ.get("MONTRA_HOOKS_SECRETS", "").split(",") if s.strip()]


def load_dev_secret(path: Path = DEV_SECRET_FILE) -> str | None:
    """The dev secret, or None if `serve` has not created one here."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def load_or_create_dev_secret(path: Path = DEV_SECRET_FILE) -> tuple[str, bool]:
    """(secret, created): read the dev secret, or create it readable by this user only."""
    existing = load_dev_secret(path)
    if existing is not None:
        return existing, False
    make_private_dir(path.parent)
    secret = generate_secret()
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    try:
        # A link never replaces an existing file: two serves starting at once agree on the first secret.
        os.link(temp, path)
    except FileExistsError:
        return load_or_create_dev_secret(path)
    finally:
        os.unlink(temp)
    return secret, True
