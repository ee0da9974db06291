"""Is it this machine? Hosts and addresses on loopback, for binding, targets and the inspector's gate."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback", "is_loopback_address"]


def is_loopback_address(address: str | None) -> bool:
    """Whether an IP address is loopback (IPv4-mapped IPv6 included). None (no socket address) is not."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def is_loopback(host: str) -> bool:
    """Whether a host to bind or send to is this machine: `localhost`, 127.0.0.0/8, `::1` (bracketed or not)."""
    return host.lower() == "localhost" or is_loopback_address(host.strip("[]"))
