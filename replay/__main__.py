"""`python -m replay`: the `montra-hooks` command, for when its script is not on PATH."""

from __future__ import annotations

from .cli import main

main()
