"""SubnetConfig / QuantPolicy: JSON round trip, stable hash, shape errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import qcompile as qc
from qcompile import ConfigError, QuantPolicy, SubnetConfig


def test_json_round_trip_every_space(space_name):
    from tests.conftest import tiny_space

    space = tiny_space(space_name)
    for seed in range(5):
        cfg = space.sample(seed=seed, bits=(2, 3, 4, 32))
        back = SubnetConfig.from_json(cfg.to_json())
        assert back == cfg
        assert hash(back) == hash(cfg)
        assert back.stable_hash() == cfg.stable_hash()


def test_stable_hash_is_process_independent():
    cfg = qc.spaces.mobilenet_v3().sample(seed=3, bits=(2, 4))
    code = "import qcompile as qc;print(qc.spaces.mobilenet_v3().sample(seed=3, bits=(2, 4)).stable_hash())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == cfg.stable_hash()


def test_frozen():
    cfg = qc.spaces.mobilenet_v3().largest()
    with pytest.raises(AttributeError):
        cfg.resolution = 1  # type: ignore[misc]


@pytest.mark.parametrize("missing", ["resolution", "depths", "kernels", "expands"])
def test_json_missing_key_names_field(missing):
    d = json.loads(qc.spaces.mobilenet_v3().largest().to_json())
    del d[missing]
    with pytest.raises(ConfigError, match=missing):
        SubnetConfig.from_json(json.dumps(d))


def test_json_bad_types_and_unknown_keys():
    d = json.loads(qc.spaces.mobilenet_v3().largest().to_json())
    with pytest.raises(ConfigError, match="kernels"):
        SubnetConfig.from_dict({**d, "kernels": "777"})
    with pytest.raises(ConfigError, match="colour"):
        SubnetConfig.from_dict({**d, "colour": 1})
    with pytest.raises(ConfigError, match="policy"):
        SubnetConfig.from_dict({**d, "policy": [[4, 4, 4]]})
    with pytest.raises(ConfigError, match="config"):
        SubnetConfig.from_json("{not json")


def test_file_round_trip(tmp_path):
    cfg = qc.spaces.spaceevo().sample(seed=1, bits=(2, 3, 4))
    p = cfg.save(tmp_path / "sub.json")
    assert SubnetConfig.load(p) == cfg
    with pytest.raises(ConfigError, match="path"):
        SubnetConfig.load(tmp_path / "nope.json")


def test_policy_uniform():
    p = QuantPolicy.uniform(4, 3, 8)
    assert p.bits == ((3, 8),) * 4 and len(p) == 4 and not p.is_float
    assert QuantPolicy.uniform(2, 32).is_float
