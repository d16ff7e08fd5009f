"""On-disk artifacts shared by the CLI commands: a training run, a subnet, (lowered dirs live in backends).

- run directory (`qcompile train --out DIR`): `run.json` (space, quantize options, recipe) and
  `checkpoints/` (the trainer's atomic checkpoints, safetensors + JSON).
- subnet directory (`qcompile extract/calibrate --out DIR`): `subnet.json` (config, space, quantize
  options, whether calibrated, the run it came from) and `state.safetensors` (the static subnet's
  state dict). Loading rebuilds the subnet by slicing a fresh supernet of the same space and loads
  the state: no pickle anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import fx

from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError
from qcompile.utils.io import atomic_write_bytes, atomic_write_text
from qcompile.utils.state import load_state as _load_state

RUN_FILE = "run.json"
SUBNET_FILE = "subnet.json"
STATE_FILE = "state.safetensors"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno})") from e


def build_quantized_supernet(space_dict: dict, quantize_options: dict | None) -> tuple[Any, fx.GraphModule]:
    """(space, graph): the traced supernet, quantized with `quantize_options` (None = float)."""
    from qcompile import api as qc
    from qcompile.spaces import from_dict

    space = from_dict(space_dict)
    graph = qc.trace(space.build_supernet())
    if quantize_options is not None:
        graph = qc.quantize(graph, **quantize_options)
    return space, graph


def write_run(out: str | os.PathLike, space, quantize_options: dict | None, extra: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": 1, "space": space.to_dict(), "quantize": quantize_options, **(extra or {})}
    return atomic_write_text(out / RUN_FILE, json.dumps(doc, indent=2))


def load_run(run_dir: str | os.PathLike) -> tuple[Any, fx.GraphModule, dict]:
    """(space, quantized supernet with the latest checkpoint's weights, run.json)."""
    from qcompile.train import latest_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory (make one with `qcompile train --out DIR`)")
    doc = _read_json(run_dir / RUN_FILE, "written by `qcompile train`")
    space, graph = build_quantized_supernet(doc["space"], doc.get("quantize"))
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint yet (train first)")
    tensors, meta = load_checkpoint(ckpt)
    if meta.get("space", {}).get("name") not in (None, space.name):
        raise CheckpointError(f"{ckpt}: checkpoint of space {meta['space'].get('name')!r}, run is {space.name!r}")
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_state(graph, state, str(ckpt))
    return space, graph, doc


def save_subnet(sub: fx.GraphModule, out: str | os.PathLike, *, space, quantize_options: dict | None,
                calibrated: bool, source: str | None = None) -> Path:
    """Write a subnet directory (config JSON + state safetensors), atomically per file."""
    from safetensors.torch import save as st_save

    cfg: SubnetConfig = sub.subnet_config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in sub.state_dict().items()}
    atomic_write_bytes(out / STATE_FILE, st_save(state))
    doc = {"format": 1, "config": cfg.to_dict(), "space": space.to_dict(), "quantize": quantize_options,
           "calibrated": calibrated, "source": source}
    atomic_write_text(out / SUBNET_FILE, json.dumps(doc, indent=2))
    return out


def load_subnet(path: str | os.PathLike) -> tuple[Any, fx.GraphModule, dict]:
    """(space, static subnet in eval mode, subnet.json) from a subnet directory (space None for a
    `qcompile quantize-model` directory)."""
    from safetensors.torch import load_file

    from qcompile import api as qc

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such subnet directory (make one with `qcompile extract --out DIR`)")
    doc = _read_json(path / SUBNET_FILE, "written by `qcompile extract`")
    if doc.get("kind") == "model":  # written by `qcompile quantize-model`: no space (None)
        from qcompile.model_artifacts import load_model_subnet

        return load_model_subnet(path, doc)
    try:
        cfg = SubnetConfig.from_dict(doc["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path / SUBNET_FILE}: bad config ({e})") from e
    space, graph = build_quantized_supernet(doc["space"], doc.get("quantize"))
    space.validate(cfg)
    sub = qc.extract(graph, cfg)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path / STATE_FILE}: missing")
    try:
        state = load_file(str(path / STATE_FILE))
    except Exception as e:
        raise CheckpointError(f"{path / STATE_FILE}: cannot be read ({e})") from e
    _load_state(sub, state, str(path / STATE_FILE))
    sub.eval()
    return space, sub, doc
