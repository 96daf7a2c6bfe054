"""systemd's notify protocol (READY=1, STOPPING=1), without a dependency.

systemd passes a datagram socket in $NOTIFY_SOCKET (a path, or "@name" for
the abstract namespace). Outside systemd the variable is unset and these
calls do nothing.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(state: str) -> bool:
    """Send *state* (e.g. "READY=1") to systemd; False when not run by systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False
