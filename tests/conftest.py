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


# ---- the last line of the run: host ISA and the x86 kernel families the tests executed ---------------
_FAMILIES_KEY = "qcompile_kernel_families"


def _family_record():
    import sys

    mod = sys.modules.get("tests.kernel_isa")  # imported only by tests that build kernels
    return (set(mod.EXECUTED), set(mod.BUILT_ONLY)) if mod is not None else (set(), set())


def pytest_configure(config):
    config._qcompile_families = (set(), set())


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand the record to the controller
        ran, only = _family_record()
        session.config.workeroutput[_FAMILIES_KEY] = [sorted(ran), sorted(only)]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    ran, only = getattr(node, "workeroutput", {}).get(_FAMILIES_KEY, ([], []))
    node.config._qcompile_families[0].update(ran)
    node.config._qcompile_families[1].update(only)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ran, only = _family_record()
    ran |= config._qcompile_families[0]
    only |= config._qcompile_families[1]
    if not (ran or only):
        return
    from tests.kernel_isa import summary_line

    terminalreporter.write_line(summary_line(ran, only))
