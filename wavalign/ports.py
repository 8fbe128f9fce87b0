"""Free TCP ports on 127.0.0.1 (torch.distributed rendezvous, test servers). Standard library only."""

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
