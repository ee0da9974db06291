"""How fast `Verifier.verify` checks one signed event, against the Standard Webhooks reference library.

Three contenders, timed in alternating rounds on the same signed event so that machine noise
(other processes, CPU frequency) falls on all of them alike:

- ours: `receiver.verify.Verifier(secret).verify(body, headers)`;
- reference: `standardwebhooks.webhooks.Webhook(secret).verify(body, headers, json_parse=False)`,
  JSON parsing off so both do the same work (verify only);
- baseline: the least any v1 verifier must do: build the signed content, one
  `hmac.digest(key, content, "sha256")` and its base64, with no header handling at all.

Run `python bench/verify.py`; `main()` returns the figures for `bench/run.py`. Target: reference / ours >= 2.0.
"""

from __future__ import annotations

import base64
import hmac
import statistics
import timeit
from collections.abc import Callable

from _events import event_body
from standardwebhooks.webhooks import Webhook

from receiver.verify import Verifier, sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TARGET = 2.0
ROUNDS = 21
CALLS = 15_000  # per contender per round: about 5 s in all


def _contenders(body: bytes, headers: dict[str, str]) -> dict[str, Callable[[], object]]:
    ours = Verifier([SECRET])
    reference = Webhook(SECRET)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]

    def baseline() -> bytes:
        content = f"{msg_id}.{timestamp}.".encode() + body
        return base64.b64encode(hmac.digest(key, content, "sha256"))

    # Check every contender accepts the event before timing it: a fast rejection would be a false win.
    ours.verify(body, headers)
    assert reference.verify(body, headers, json_parse=False) is None
    assert "v1," + baseline().decode() == headers["webhook-signature"]
    return {
        "ours": lambda: ours.verify(body, headers),
        "reference": lambda: reference.verify(body, headers, json_parse=False),
        "baseline": baseline,
    }


def main() -> dict[str, float]:
    """Time the three contenders; print and return medians in microseconds per call, and the ratio."""
    body = event_body(0)
    # Signed now: the reference library checks the timestamp against the real clock, as ours does by default.
    headers = sign(body, secret=SECRET)
    contenders = _contenders(body, headers)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, call in contenders.items():
            # timeit turns the garbage collector off while it measures, for every contender alike.
            samples[name].append(timeit.timeit(call, number=CALLS) / CALLS * 1e6)
    figures = {f"{name}_us": statistics.median(times) for name, times in samples.items()}
    figures["ratio_reference_over_ours"] = figures["reference_us"] / figures["ours_us"]

    print(f"verify one signed {len(body)}-byte event, median of {ROUNDS} alternating rounds of {CALLS:,} calls")
    print(f"  ours       Verifier.verify                          {figures['ours_us']:6.2f} us/op")
    print(f"  reference  standardwebhooks verify(json_parse=False) {figures['reference_us']:6.2f} us/op")
    print(f"  baseline   hmac.digest + base64, no header checks    {figures['baseline_us']:6.2f} us/op")
    ratio = figures["ratio_reference_over_ours"]
    print(f"  reference / ours = {ratio:.2f}x (target >= {TARGET}: {'met' if ratio >= TARGET else 'MISSED'})")
    return figures


if __name__ == "__main__":
    main()
