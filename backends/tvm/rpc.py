"""TVM RPC sessions for measuring on a real board (`Lowered.benchmark(remote="host:port")`).

On the board run `python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090` (TVM runtime only).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from qcompile.errors import ConfigError, LoweringError

log = logging.getLogger(__name__)

__all__ = ["parse_remote", "remote_session"]


def parse_remote(remote: str) -> tuple[str, int]:
    """`"host:port"` -> (host, port); ConfigError otherwise."""
    host, sep, port = remote.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("remote", remote, "'host:port'", "e.g. '192.168.1.20:9090'")
    return host, int(port)


@contextlib.contextmanager
def remote_session(remote: str, timeout: float = 60.0) -> Iterator[Any]:
    """Connect to a TVM RPC server; LoweringError naming the address if it cannot be reached."""
    from tvm import rpc

    host, port = parse_remote(remote)
    try:
        sess = rpc.connect(host, port, session_timeout=timeout)
    except Exception as e:  # connection refused / timed out surface as TVM errors
        raise LoweringError(f"remote={remote!r}", f"cannot connect to the TVM RPC server ({e})",
                            "start `python -m tvm.exec.rpc_server --port PORT` on the board") from e
    try:
        yield sess
    finally:
        del sess
