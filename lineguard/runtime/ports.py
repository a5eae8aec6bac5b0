"""Free loopback ports for a station started on the spot (bench, tests, benchmarks), and whether
an address to bind is loopback (what may be served without a token or a login)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1. All are held open while choosing, so none is handed
    out twice (picking them one at a time can return the same port, and two binds then collide)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_loopback(host: str) -> bool:
    """Whether an address to bind stays on this machine (a host name other than localhost: no)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
