"""The `montra-hooks` command: the receiver's commands plus replay's (trigger, replay, watch, listen, fixtures)."""

from __future__ import annotations

from receiver.cli import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="montra-hooks")
