"""A pytest plugin (conftest's `pytest_plugins`): say once, at the end of a run, why a kind of test was skipped.

Without a PostgreSQL server or Chromium, dozens of tests skip for one reason. Each skip line carries a short
reason (`explained_skip` registers it); the long explanation, what is missing and how to get it, is printed
once, before pytest's short summary, and only in a run where such a skip happened.

PYTEST_DONT_REWRITE: support.postgres imports this module before pytest loads it as a plugin; it asserts nothing,
and the marker keeps pytest from warning that it is too late to rewrite it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

NOTE_POINTER = "see the note at the end of the run"
"""What a short reason ends with, so a reader of one skip line knows where the long explanation is."""

_NOTES: dict[str, Callable[[], str]] = {}


def explained_skip(what: str, note: Callable[[], str]) -> str:
    """The short skip reason for `what` (e.g. "no PostgreSQL server"); `note()` is printed once if one skipped.

    `note` is called at the end of the run, so it can say what was found then (which server did not answer).
    """
    reason = f"{what} ({NOTE_POINTER})"
    _NOTES[reason] = note
    return reason


def _reason(report: pytest.TestReport) -> str | None:
    # A skip's longrepr is (path, line, "Skipped: <reason>"); anything else is not a skip we explain.
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reasons = {_reason(report) for report in terminalreporter.stats.get("skipped", [])}
    for reason, note in _NOTES.items():
        if reason in reasons:
            count = sum(_reason(report) == reason for report in terminalreporter.stats["skipped"])
            terminalreporter.write_sep("-", f"{count} skipped: {reason.removesuffix(f' ({NOTE_POINTER})')}")
            terminalreporter.write_line(note())
