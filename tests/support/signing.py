"""Signed requests: what a sender of webhooks does, through `receiver.sign`."""

from __future__ import annotations

import httpx

from receiver import sign


def signed_post(
    url: str,
    body: bytes,
    secret: str,
    msg_id: str | None = None,
    *,
    client: httpx.Client | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST `body` signed with `secret` (through `receiver.sign`) as `application/json`.

    `client` may be any httpx-style client, a Starlette `TestClient` included (then `url` can be a path);
    `headers` are added after the signature headers.
    """
    sent = {"content-type": "application/json", **sign(body, secret=secret, msg_id=msg_id), **(headers or {})}
    if client is not None:
        return client.post(url, content=body, headers=sent)
    return httpx.post(url, content=body, headers=sent, timeout=10.0)


async def async_post(client: httpx.AsyncClient, url: str, body: bytes, secret: str, msg_id: str) -> httpx.Response:
    """`signed_post` for an AsyncClient: POST `body` signed with `secret` as `application/json`."""
    headers = {"content-type": "application/json", **sign(body, secret=secret, msg_id=msg_id)}
    return await client.post(url, content=body, headers=headers)
