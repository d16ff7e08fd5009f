"""TVM RPC sessions for measuring on a real board (`Lowered.benchmark(remote="host:port")`), and the server.

On the board run `python -m qcompile.backends.tvm.rpc_server --host 0.0.0.0 --port 9090` where qcompile is
installed, or `python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090` with the TVM runtime only. The two
differ on x86 boards with AMX-INT8: Linux gives a process the AMX tile data only after it asks
(`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`), and a kernel that touches the tiles without it dies with SIGILL.
qcompile's server asks in the server process before it serves (`start_rpc_server`); the sessions are forked
from it and keep the permission. A plain `tvm.exec.rpc_server` does not ask, so libraries lowered for an AMX
target crash it; start it as

    python -c "import ctypes, runpy, sys; ctypes.CDLL(None).syscall(158, 0x1023, 18); \\
        sys.argv[0] = 'rpc_server'; runpy.run_module('tvm.exec.rpc_server', run_name='__main__')" --port 9090

(158 = `SYS_arch_prctl`, 0x1023 = `ARCH_REQ_XCOMP_PERM`, 18 = `XFEATURE_XTILEDATA`), and not with `--no-fork`:
spawned session processes do not inherit the permission.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from qcompile.errors import ConfigError, LoweringError

log = logging.getLogger(__name__)

__all__ = ["allow_amx_in_server", "parse_remote", "remote_emulation", "remote_session", "start_rpc_server"]


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
                            "start `python -m qcompile.backends.tvm.rpc_server --port PORT` (or TVM's "
                            "`tvm.exec.rpc_server`, module doc) on the board") from e
    try:
        yield sess
    finally:
        del sess


def remote_emulation(sess: Any) -> str | None:
    """What emulates the remote device (e.g. "qemu-aarch64"), or None for real hardware.

    qcompile's aarch64 server under qemu (`qemu.QemuRpcServer`) answers `qemu.EMULATED_QUERY`; a board's TVM
    server has no such function, so anything else counts as real hardware."""
    from qcompile.backends.tvm.qemu import EMULATED_QUERY

    try:
        query = sess.get_function(EMULATED_QUERY)
    except Exception:  # noqa: BLE001 - "function not found" on the remote: a real server
        return None
    return str(query()) if query is not None else None


def allow_amx_in_server() -> None:
    """The RPC server's `server_init_callback`: ask Linux for the AMX tile data in the server process, before it
    serves (`intrin.amx.enable_amx`; a no-op off x86 Linux). Sessions are forked from that process and inherit
    the permission, so libraries with AMX kernels run there as they do natively (`lowered._allow_amx`)."""
    from qcompile.backends.tvm.intrin.amx import enable_amx

    if enable_amx():
        log.info("RPC server: AMX tile data granted (arch_prctl ARCH_REQ_XCOMP_PERM)")


def start_rpc_server(host: str = "0.0.0.0", port: int = 9090, port_end: int = 9199, **kwargs: Any) -> Any:
    """A TVM RPC server (`tvm.rpc.Server`, its keyword arguments passed on: `key`, `tracker_addr`, `silent`, ...)
    that requests the AMX tile permission before serving (`allow_amx_in_server`). ConfigError for `no_fork=True`:
    its spawned sessions would not inherit the permission."""
    from tvm import rpc

    if kwargs.get("no_fork"):
        raise ConfigError("no_fork", True, "False (sessions must be forked from the server to keep the AMX "
                          "tile permission)")
    if "server_init_callback" in kwargs:
        raise ConfigError("server_init_callback", kwargs["server_init_callback"],
                          "not set: start_rpc_server installs allow_amx_in_server")
    return rpc.Server(host=host, port=port, port_end=port_end, server_init_callback=allow_amx_in_server, **kwargs)
