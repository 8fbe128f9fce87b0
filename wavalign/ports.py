"""Free TCP ports on 127.0.0.1 (torch.distributed rendezvous, test servers), and whether anything
answers at a Ray cluster address. Standard library only."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct ports free now: all n sockets are held open while the kernel picks (one closed
    before the next is bound could be handed out again, and a process given the same port twice
    for two of its listeners fails to start)."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def unreachable(address: str, named_by: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at a named cluster address (host:port or ray://host:port), or None: a
    TCP connection within timeout_s, checked before the run writes anything. (auto, local and other
    forms are left to Ray.)"""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit() or "/" in host_port:
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        return (
            f"{named_by} {address}: no Ray cluster answers at {host}:{port} ({reason}); start one there "
            f"(`ray start --head`), or name none for a local cluster"
        )
    return None
