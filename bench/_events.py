"""The event body every benchmark sends: a typical `subscription.upgraded`, about 400 bytes, distinct per n."""

from __future__ import annotations

import json


def event_body(n: int) -> bytes:
    event = {
        "id": f"evt_bench_{n:09d}",
        "type": "subscription.upgraded",
        "timestamp": "2026-11-25T17:00:00Z",
        "data": {
            "id": f"sub_bench_{n:09d}",
            "customer_id": "cus_01JD8Z3A1B2C3D4E5F6G7H8J9K",
            "pricing_model_id": "pm_pro_monthly",
            "status": "active",
            "quantity": 3,
            "current_period_start": "2026-11-25T17:00:00Z",
            "current_period_end": "2026-12-25T17:00:00Z",
        },
        "previous_attributes": {"pricing_model_id": "pm_starter_monthly", "quantity": 1},
    }
    return json.dumps(event, separators=(",", ":")).encode()
