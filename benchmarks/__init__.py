"""Benchmarks: each prints its figures as ratios against a baseline measured in the same run."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
