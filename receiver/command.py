"""How hints name the `montra-hooks` command: as the user's shell will find it, so a pasted line runs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["command_name"]


def command_name() -> str:
    """`montra-hooks` when it is on PATH, else the script beside this Python (`make run` leaves it in .venv/bin)."""
    if shutil.which("montra-hooks"):
        return "montra-hooks"
    beside = Path(sys.executable).parent / "montra-hooks"
    if not beside.exists():
        return "montra-hooks"
    relative = os.path.relpath(beside)
    return str(beside) if relative.startswith("..") else relative
