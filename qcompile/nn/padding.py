"""The link from a conv to the activation quantizer that feeds it, for zero-code padding.

A BatchQuant zero point `z + beta` (BatchQuant Eq. 5) is fractional, so real 0 has no code; the
integer conv pads with `pad_value = floor(z + beta + 1/2)`. The fake-quant convs pad with that code's
real value instead of 0 (`qcompile.nn.elastic.padded_conv2d`, `qcompile.nn.static.zero_code_conv2d`),
so the two agree exactly. They find the quantizer through this link.

The link is a plain reference in the conv's `__dict__`, not a submodule: the quantizer is owned by the
graph (it runs as its own node), and a second owner would duplicate it in `state_dict` and in
`modules()`. `copy.deepcopy` of the graph carries the link over to the copied quantizer.
"""

from __future__ import annotations

from torch import nn

__all__ = ["link_pad_quantizer", "pad_quantizer"]

_ATTR = "_input_quant"


def link_pad_quantizer(conv: nn.Module, quantizer: nn.Module | None) -> None:
    """Make `conv` pad with `quantizer`'s zero code (None removes the link)."""
    if quantizer is None:
        conv.__dict__.pop(_ATTR, None)
    else:
        object.__setattr__(conv, _ATTR, quantizer)  # bypasses nn.Module.__setattr__: not a submodule


def pad_quantizer(conv: nn.Module) -> nn.Module | None:
    """The quantizer `conv` pads with the zero code of, or None."""
    return conv.__dict__.get(_ATTR)
