"""`python -m qcompile.backends.tvm.rpc_server`: a TVM RPC server for timing lowered libraries on a board.

The options of `python -m tvm.exec.rpc_server` that qcompile's timing uses; the server additionally requests the
AMX-INT8 tile permission before it serves (`rpc.start_rpc_server`), so libraries lowered for an AMX target run
on it instead of dying with SIGILL.

    python -m qcompile.backends.tvm.rpc_server --host 0.0.0.0 --port 9090
    python -m qcompile.backends.tvm.rpc_server --tracker 10.0.0.1:9190 --key spr
"""

from __future__ import annotations

import argparse
import logging

from qcompile.backends.tvm.rpc import parse_remote, start_rpc_server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--port", type=int, default=9090, help="first port to try")
    ap.add_argument("--port-end", type=int, default=9199, help="last port to try")
    ap.add_argument("--tracker", help="register with the RPC tracker at host:port (needs --key)")
    ap.add_argument("--key", default="", help="device key to register under with the tracker")
    ap.add_argument("--silent", action="store_true", help="only log warnings")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.silent else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    tracker = parse_remote(a.tracker) if a.tracker else None
    if tracker and not a.key:
        ap.error("--tracker needs --key (the device key the server registers under)")
    server = start_rpc_server(a.host, a.port, a.port_end, key=a.key, tracker_addr=tracker, silent=a.silent)
    server.proc.join()


if __name__ == "__main__":
    main()
