"""Shared fixtures: tiny spaces (width 0.25, 32x32, 10 classes) so each test runs in seconds."""

from __future__ import annotations

import pytest
import torch

import qcompile as qc

SPACE_NAMES = ("mobilenet_v3", "mobilenet_v2", "spaceevo")


def tiny_space(name: str, **kw):
    kw.setdefault("num_classes", 10)
    kw.setdefault("width_mult", 0.25)
    kw.setdefault("resolutions", (32,))
    return getattr(qc.spaces, name)(**kw)


@pytest.fixture(scope="session", params=SPACE_NAMES)
def space_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_supernets():
    """name -> (space, eager supernet, traced graph), built once per session."""
    torch.manual_seed(0)
    out = {}
    for name in SPACE_NAMES:
        space = tiny_space(name)
        net = space.build_supernet().eval()
        out[name] = (space, net, qc.trace(net))
    return out


@pytest.fixture(scope="session")
def tiny_quantized():
    """name -> (space, quantized supernet graph)."""
    torch.manual_seed(0)
    out = {}
    for name in SPACE_NAMES:
        space = tiny_space(name)
        out[name] = (space, qc.quantize(qc.trace(space.build_supernet())))
    return out
