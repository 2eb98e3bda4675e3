"""Where a server binds: what counts as this machine only."""

from __future__ import annotations

import ipaddress


def is_loopback(address: str) -> bool:
    """Loopback addresses only; any other host name could resolve anywhere."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False
