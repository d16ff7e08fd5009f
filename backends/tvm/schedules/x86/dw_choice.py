"""Which x86 depthwise kernel a depthwise `OpCall` gets, decided from its shape alone.

Shared by the strategy (`strategy._ConvBase.kernel` emits the kernel) and the tuner (`tune.tune_opcall` has
nothing to time where the kernel takes no knobs), so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from qcompile.backends.tvm.schedules.conv import DwConv
from qcompile.backends.tvm.schedules.x86.depthwise import cvec_dw_lanes, small_dw_applies
from qcompile.backends.tvm.schedules.x86.gemv import gemv_lanes
from qcompile.backends.tvm.schedules.x86.workloads import depthwise_workload

__all__ = ["cvec_lanes", "depthwise_knobs_used"]


def cvec_lanes(call: Any) -> int:
    """Lanes of the channel-vector depthwise kernel for a depthwise OpCall (`depthwise.cvec_dw_lanes`), 0: none."""
    _, c, h, w = (int(v) for v in call.params["x_shape"])
    _, _, ho, wo = (int(v) for v in call.params["out_shape"])
    return cvec_dw_lanes(c, h * w, ho * wo, gemv_lanes(call.target))


def depthwise_knobs_used(call: Any) -> bool:
    """Whether the depthwise kernel the strategy emits for a depthwise OpCall reads tuned `DwKnobs`: only the
    row / tap-pair / quad kernels do; the channel-vector kernel (`cvec_lanes`) and the small-input one
    (`depthwise.small_dw_applies`) follow from the shape, so `tune.tune_opcall` has nothing to time for them."""
    if cvec_lanes(call):
        return False
    wl = depthwise_workload(call.params)
    dw = DwConv(wl["c"], wl["h"], wl["w"], *wl["k"], tuple(wl["stride"]), tuple(wl["padding"]),
                tuple(wl["dilation"]))
    return not small_dw_applies(dw)
