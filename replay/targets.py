"""Where trigger, replay, watch and listen send, and the secret they sign with.

Both checks raise `ConfigurationError` with a message that says what to do; none of them ever
quotes a secret. The CLI turns them into one-line usage errors.
"""

from __future__ import annotations

from receiver.dev_secret import load_dev_secret, secrets_from_env
from receiver.errors import ConfigurationError
from receiver.loopback import is_loopback

__all__ = ["DEFAULT_TO", "RemoteTarget", "check_target", "signing_secret"]

DEFAULT_TO = "http://127.0.0.1:8000/webhooks"
"""Where trigger sends by default: `montra-hooks serve` with its defaults."""


class RemoteTarget(ConfigurationError):
    """A well-formed target that is not on loopback, and sending there was not allowed."""


def check_target(url: str, *, allow_remote: bool) -> str:
    """`url` if it is an http(s) URL whose host is loopback (any host with `allow_remote`).

    Raises ConfigurationError for what is not an http(s) URL, RemoteTarget for a host off loopback.
    """
    import httpx  # here: only the commands that send need it, and they load it anyway

    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decodes an xn-- name: a malformed one raises here, not in the middle of a send
    except (httpx.InvalidURL, UnicodeError) as e:
        raise ConfigurationError(f"{url!r} is not a URL: {e}.") from e
    if parsed.scheme not in ("http", "https") or not host:
        raise ConfigurationError(f"{url!r} is not an http(s) URL: use e.g. {DEFAULT_TO}.")
    if not allow_remote and not is_loopback(host):
        raise RemoteTarget(f"{host} is not on loopback: pass --allow-remote to send events to {url} on purpose.")
    return url


def signing_secret(secret: str | None) -> str | None:
    """`secret`, else the first of MONTRA_HOOKS_SECRETS, else the dev secret; None when there is none.

    Raises ConfigurationError when the secret found is not a valid signing secret.
    """
    if secret is None:
        configured = secrets_from_env()
        secret = configured[0] if configured else load_dev_secret()
    if secret is not None:
        from receiver.verify import sign  # here: commands that only read need no cryptography to start

        sign(b"", secret=secret)  # a malformed secret fails here; its message never quotes the secret
    return secret
