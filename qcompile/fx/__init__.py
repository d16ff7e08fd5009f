"""torch.fx tracing of supernets, the active-subnet switch, and the graph verifier."""

from qcompile.fx.tracer import SupernetTracer, register_leaf, set_active, trace
from qcompile.fx.verify import GraphVerificationError, verify_graph

__all__ = ["SupernetTracer", "register_leaf", "set_active", "trace", "GraphVerificationError", "verify_graph"]
