"""The local development secret: created by `serve` on loopback, used by trigger, replay and listen."""

from __future__ import annotations

import os
from pathlib import Path

from .private_files import PRIVATE_DIR, load_or_create_private, read_private

__all__ = ["DEV_SECRET_FILE", "load_dev_secret", "load_or_create_dev_secret", "secrets_from_env"]

DEV_SECRET_FILE = PRIVATE_DIR / "dev-secret"
"""Relative to the working directory, as `montra-events.db` is."""


def secrets_from_env() -> list[str]:
    """Secrets from `MONTRA_HOOKS_SECRETS` (comma-separated), if set.

    Here, not in `receiver.app`, so the CLI's senders find them without loading Starlette.
    """
    return [s.strip() for s in os.environ.get("MONTRA_HOOKS_SECRETS", "").split(",") if s.strip()]


def load_dev_secret(path: Path = DEV_SECRET_FILE) -> str | None:
    """The dev secret, or None if `serve` has not created one here.

    Raises `ConfigurationError` when the file or its folder is a symbolic link (never followed).
    """
    return read_private(path)


def load_or_create_dev_secret(path: Path = DEV_SECRET_FILE) -> tuple[str, bool]:
    """(secret, created): read the dev secret, or create it readable by this user only (see `private_files`)."""
    from .verify import generate_secret  # here: reading commands need no cryptography to start

    return load_or_create_private(path, generate_secret)
