"""BatchQuant's zero point: QFA Eq. 1/5 round (half up) for new quantizers; states written before the mode was
recorded load as floor and keep their numerics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import qcompile as qc
from qcompile.artifacts import load_subnet, save_subnet
from qcompile.quant import BatchQuant, calibration


def _calibrated(mode: str, lo: float = -2.2, hi: float = 0.8) -> BatchQuant:
    q = BatchQuant((2, 4), estimator="minmax", zero_rounding=mode)
    q.active_bits = 2
    with calibration(q):
        q(torch.tensor([[lo, hi]]))
    return q.eval()


@pytest.mark.parametrize(
    "lo,hi,z_round,z_floor",
    [(-2.2, 0.8, 2.0, 3.0), (-2.7, 0.3, 3.0, 3.0), (-2.5, 0.5, 3.0, 3.0), (-0.4, 2.6, 0.0, 1.0), (1.0, 4.0, 0.0, 0.0)],
)
def test_zero_point_rounds_half_up_or_floors(lo, hi, z_round, z_floor):
    """delta = (hi - lo) / 3 = 1: z = clamp(floor(-lo + 1/2), 0, 3) (QFA's bracket) vs clamp(-floor(lo), 0, 3)."""
    assert _calibrated("round", lo, hi).qparams() == (pytest.approx(1.0), z_round)
    assert _calibrated("floor", lo, hi).qparams() == (pytest.approx(1.0), z_floor)


def test_new_quantizers_round_and_the_mode_is_saved(tmp_path):
    q = _calibrated("round")
    assert BatchQuant((4,)).zero_rounding == "round" and "zero_rounding='round'" in repr(q)
    save_file(q.state_dict(), tmp_path / "q.safetensors")
    again = BatchQuant((2, 4), estimator="minmax", zero_rounding="floor")
    again.load_state_dict(load_file(tmp_path / "q.safetensors"))
    assert again.zero_rounding == "round" and again.freeze(2).zero_rounding == "round"
    with pytest.raises(qc.ConfigError, match="zero_rounding"):
        BatchQuant((4,), zero_rounding="nearest")


def test_state_without_the_mode_loads_as_floor():
    """A state dict written before the mode was recorded (no `zero_round`) keeps the floor it was trained with."""
    old = {k: v for k, v in _calibrated("floor").state_dict().items() if k != "zero_round"}
    q = BatchQuant((2, 4), estimator="minmax")  # a new quantizer would round ...
    q.load_state_dict(old)  # ... strict load: the missing key is not an error
    q.active_bits = 2
    assert q.zero_rounding == "floor" and q.eval().qparams()[1] == 3.0
    x = torch.linspace(-3, 2, 41)
    torch.testing.assert_close(q(x), _calibrated("floor")(x), rtol=0, atol=0)


def test_old_subnet_artifact_keeps_its_numerics(tmp_path, tiny_quantized):
    """A calibrated subnet saved by an earlier version (state without `zero_round`, zero points floored)
    loads with floor and gives the outputs it gave then."""
    torch.manual_seed(0)
    space, qnet = tiny_quantized["mobilenet_v2"]
    opts = {"weight_bits": [2, 3, 4, 8, 32], "act_bits": [2, 3, 4, 8, 32]}  # tests/conftest.py's qc.quantize defaults
    sub = qc.extract(qnet, space.sample(seed=2, bits=(4,)))
    for m in sub.modules():
        if isinstance(m, BatchQuant):
            m.zero_round.fill_(False)  # the numerics of an earlier version
    qc.calibrate(sub, [torch.randn(8, 3, 32, 32) for _ in range(2)])
    sub.eval()
    path = save_subnet(sub, tmp_path / "sub", space=space, quantize_options=opts, calibrated=True)
    state = load_file(path / "state.safetensors")
    dropped = [k for k in state if k.endswith("zero_round")]
    assert dropped  # the subnet has BatchQuant quantizers
    save_file({k: v for k, v in state.items() if k not in dropped}, path / "state.safetensors")
    # an earlier version wrote no state checksum either
    doc = json.loads((path / "subnet.json").read_text())
    doc.pop("state_sha256", None)
    (path / "subnet.json").write_text(json.dumps(doc))
    _, loaded, _ = load_subnet(path)
    assert {m.zero_rounding for m in loaded.modules() if isinstance(m, BatchQuant)} == {"floor"}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), sub(x), rtol=0, atol=0)
        rounded = load_subnet(save_subnet(sub, tmp_path / "new", space=space, quantize_options=opts, calibrated=True))[
            1
        ]
    assert {m.zero_rounding for m in rounded.modules() if isinstance(m, BatchQuant)} == {"floor"}  # mode kept
