"""Replace personal data in a recorded event with fixture values, so the fixture can be committed.

Two rules, applied to every value of the body:

- By key name. ``email`` (and ``*_email``) becomes ``ada@example.com``; a person's name becomes
  ``Ada Lovelace`` (``first_name``, ``last_name``, ``full_name``, ``*_name`` of a person such as
  ``cardholder_name``, and ``name`` where it names a person: in a customer's ``data``, or in an object
  that also holds an email, a phone or an address); ``phone`` (``*_phone``, ``mobile``) becomes a
  555 number; an address object's ``line1``, ``line2``, ``city`` and ``postal_code`` (``zip``)
  become a fixture address (its ``state`` and ``country`` stay: tax and currency logic reads them);
  a card number key (``card_number``, ``pan``, a card's ``number``) becomes a test card.
- By value. Anything email-like, and any run of 13 to 19 digits (spaces or dashes between groups
  allowed, Luhn-valid or not), inside any string, is replaced in place.

Ids (``id``, ``*_id``, ``*_ids``), timestamps (``*_at``, ``timestamp``, ``*_time``, ``*_ms``),
amounts, currencies and the event ``type`` are kept as they are, so scenarios can still reference
the resources and handlers still see the same amounts. The same real value always becomes the
same fixture value within one event (two different emails stay two different emails).

    >>> scrubbed, found = scrub({"data": {"email": "jane@corp.test", "note": "card 4000 0566 5566 5556"}})
    >>> scrubbed["data"]
    {'email': 'ada@example.com', 'note': 'card 4242 4242 4242 4242'}
    >>> [str(each) for each in found]
    ['data.email (email)', 'data.note (card number in text)']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Scrubbed", "scrub"]

_PEOPLE = [
    ("Ada", "Lovelace"),
    ("Grace", "Hopper"),
    ("Alan", "Turing"),
    ("Katherine", "Johnson"),
    ("Edsger", "Dijkstra"),
    ("Barbara", "Liskov"),
]
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, possibly grouped by single spaces or dashes, not part of a longer word or number:
# `txn_4242424242424242` is an id, `1.5e1234567890123` is not a card.
_CARD = re.compile(r"(?<![\w.+-])\d(?:[ -]?\d){12,18}(?![\w.-]|[ -]\d)")

_EMAIL_KEYS = {"email", "email_address"}
_PERSON_NAME_KEYS = {
    "first_name",
    "last_name",
    "full_name",
    "given_name",
    "family_name",
    "middle_name",
    "customer_name",
    "cardholder_name",
    "billing_name",
    "shipping_name",
    "contact_name",
}
_NAME_PARTS = {"first_name", "given_name", "last_name", "family_name", "middle_name"}
_PHONE_KEYS = {"phone", "phone_number", "mobile", "mobile_phone", "telephone"}
_CARD_KEYS = {"card_number", "pan", "account_number"}
_ADDRESS_KEYS = {"line1": "line1", "line2": "line2", "city": "city", "postal_code": "postal_code", "zip": "postal_code"}
_ADDRESS_FIELDS = {
    "address_line1": "line1",
    "address_line2": "line2",
    "postal_code": "postal_code",
    "zip_code": "postal_code",
}
# Objects whose `name` is a person's, whatever else they hold.
_PERSON_OBJECTS = {"customer", "billing_details", "shipping", "contact", "cardholder", "owner", "billing", "recipient"}


@dataclass(frozen=True)
class Scrubbed:
    """One value replaced: where (a dotted path, as `--set` takes it) and what kind of data it was."""

    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.path} ({self.kind})"


@dataclass
class _Cast:
    """Fixture values handed out in order, the same one again for a value seen before."""

    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def number(self, kind: str, original: str) -> int:
        """0 for the first value of a kind, 1 for the next different one...; a value seen before keeps its number."""
        key = (kind, original.strip().lower())
        if key not in self.seen:
            self.seen[key] = self.counts.get(kind, 0)
            self.counts[kind] = self.seen[key] + 1
        return self.seen[key]

    def email(self, original: str) -> str:
        n = self.number("email", original)
        return f"{_PEOPLE[n][0].lower()}@example.com" if n < len(_PEOPLE) else f"person{n + 1}@example.com"

    def name(self, original: str, key: str) -> str:
        # Each part has its own count, so a first and a last name of one person stay one fixture person.
        n = self.number("name" if key not in _NAME_PARTS else f"name.{key}", original)
        first, last = _PEOPLE[n] if n < len(_PEOPLE) else ("Person", str(n + 1))
        if key in ("first_name", "given_name"):
            return first
        if key in ("last_name", "family_name"):
            return last
        if key == "middle_name":
            return "Byron"
        return f"{first} {last}"

    def phone(self, original: str) -> str:
        return f"+1415555{100 + self.number('phone', original):04d}"

    def address(self, original: str, part: str) -> str:
        n = self.number(f"address.{part}", original)
        return {
            "line1": f"{12 + n} Analytical Way",
            "line2": f"Suite {n + 1}",
            "city": "San Francisco",
            "postal_code": "94107",
            "text": f"{12 + n} Analytical Way, San Francisco, CA 94107",
        }[part]


def _test_card(digits: int) -> str:
    """A test card number of `digits` digits (4242...), Luhn-valid: 16 digits give 4242424242424242."""
    body = ("42" * digits)[: digits - 1]
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


def _card_shaped(original: str) -> str:
    """The test card in the original's shape: its spaces and dashes where they were."""
    card = iter(_test_card(sum(c.isdigit() for c in original)))
    return "".join(next(card) if c.isdigit() else c for c in original)


def _is_kept(key: str) -> bool:
    """Ids, timestamps, currencies and types keep their values, even when one looks like a card number."""
    return (
        key in ("id", "ids", "type", "currency", "timestamp", "created", "updated")
        or key.endswith(("_id", "_ids", "_at", "_ms", "_time", "_timestamp", "_date", "_currency"))
        or key.startswith("currency")
    )


def _segment(key: str | int) -> str:
    if isinstance(key, int):
        return str(key)
    # Quoted as `--set` expects: a key holding a dot, or one that would read as a list index.
    return json.dumps(key) if not key or "." in key or '"' in key or key.isdigit() else key


class _Scrubber:
    def __init__(self) -> None:
        self.cast = _Cast()
        self.found: list[Scrubbed] = []

    def note(self, path: list[str | int], kind: str) -> None:
        self.found.append(Scrubbed(".".join(_segment(s) for s in path), kind))

    def walk(self, node: Any, path: list[str | int], *, person: bool = False, address: bool = False) -> Any:
        if isinstance(node, list):
            return [self.walk(item, [*path, n], person=person, address=address) for n, item in enumerate(node)]
        if isinstance(node, dict):
            # A `name` beside an email, a phone or an address is a person's (a pricing model's name is not).
            person = person or any(
                str(k).lower() in _EMAIL_KEYS | _PHONE_KEYS | {"address"} or str(k).lower().endswith("_email")
                for k in node
            )
            out: dict[str, Any] = {}
            for key, value in node.items():
                lower = key.lower()
                out[key] = self.value(
                    value,
                    [*path, key],
                    lower,
                    person=person,
                    address=address,
                    nested_person=lower in _PERSON_OBJECTS or lower.endswith("_details"),
                    nested_address=lower == "address" or lower.endswith("_address"),
                )
            return out
        if isinstance(node, str):
            return self.text(node, path)
        return node

    def value(
        self,
        value: Any,
        path: list[str | int],
        key: str,
        *,
        person: bool,
        address: bool,
        nested_person: bool,
        nested_address: bool,
    ) -> Any:
        if _is_kept(key):
            return value
        if isinstance(value, dict | list):
            return self.walk(value, path, person=nested_person, address=nested_address)
        card_key = key in _CARD_KEYS or (key == "number" and path[-2:-1] == ["card"])
        if isinstance(value, int) and not isinstance(value, bool):
            # A number is a card only by its key: a 13-digit integer elsewhere is a time in milliseconds.
            if card_key and 13 <= len(str(abs(value))) <= 19:
                self.note(path, "card number")
                return int(_test_card(len(str(abs(value)))))
            return value
        if not isinstance(value, str) or not value.strip():
            return value
        if key in _EMAIL_KEYS or key.endswith("_email"):
            self.note(path, "email")
            return self.cast.email(value)
        if key in _PERSON_NAME_KEYS or (key == "name" and person):
            self.note(path, "name")
            return self.cast.name(value, key)
        if key in _PHONE_KEYS or key.endswith("_phone"):
            self.note(path, "phone")
            return self.cast.phone(value)
        if nested_address:  # an address given as one string
            self.note(path, "address")
            return self.cast.address(value, "text")
        part = _ADDRESS_KEYS.get(key) if address else _ADDRESS_FIELDS.get(key)
        if part is not None:
            self.note(path, "address")
            return self.cast.address(value, part)
        if card_key and _CARD.fullmatch(value.strip()):
            self.note(path, "card number")
            return _card_shaped(value)
        return self.text(value, path)

    def text(self, value: str, path: list[str | int]) -> str:
        """Emails and card numbers inside any other string, replaced where they stand."""
        replaced = _EMAIL.sub(lambda m: self.cast.email(m.group()), value)
        if replaced != value:
            self.note(path, "email in text")
        carded = _CARD.sub(lambda m: _card_shaped(m.group()), replaced)
        if carded != replaced:
            self.note(path, "card number in text")
        return carded


def scrub(body: Any) -> tuple[Any, list[Scrubbed]]:
    """A scrubbed copy of a parsed event body, and what was replaced (paths and kinds, never values)."""
    scrubber = _Scrubber()
    if isinstance(body, dict):
        # A customer event's data is a person: its `name` is theirs.
        customer = isinstance(body.get("type"), str) and body["type"].startswith("customer.")
        result = {
            key: (
                scrubber.walk(value, [key], person=customer)
                if key in ("data", "previous_attributes")
                else scrubber.value(
                    value,
                    [key],
                    key.lower(),
                    person=False,
                    address=False,
                    nested_person=False,
                    nested_address=False,
                )
            )
            for key, value in body.items()
        }
        return result, scrubber.found
    return scrubber.walk(body, []), scrubber.found
