"""`qcompile quantize-model`: bring your own CNN to a subnet directory the other commands accept.

    qcompile quantize-model path/to/file.py:factory --policy 8,8 --data digits --out SUBNET_DIR
    qcompile lower SUBNET_DIR --out LOWERED && qcompile run LOWERED

`factory` is a callable in the file returning an `nn.Module` (trained weights are its business, e.g. a
`load_state_dict` inside). The subnet directory holds `subnet.json` (kind "model": the factory, policy,
input shape and `quantize_model` options) and `state.safetensors` (the quantized graph's state dict,
BN statistics and calibrated quantizer ranges included). Loading calls the factory again, re-runs
`quantize_model` with the stored options and loads the state: no pickle.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from qcompile.errors import CheckpointError, ConfigError
from qcompile.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["add_parser", "cmd_quantize_model", "cmd_recalibrate_model", "load_factory", "load_model_subnet",
           "save_model_subnet"]

log = logging.getLogger(__name__)

SUBNET_FILE = "subnet.json"
STATE_FILE = "state.safetensors"
KIND = "model"


def load_factory(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the model `FILE.py:NAME` names (NAME(**kwargs) must return an nn.Module)."""
    path_s, sep, name = spec.rpartition(":")
    if not sep or not path_s or not name:
        raise ConfigError("model", spec, "FILE.py:FACTORY")
    path = Path(path_s)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    mod_name = f"qcompile_user_model_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError("model", spec, "a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    loader_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError("model factory", name, f"a callable defined in {path}")
    model = factory(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec}()", type(model).__name__, "an nn.Module")
    return model.eval()


def save_model_subnet(gm: fx.GraphModule, out: str | os.PathLike, *, factory: str, factory_kwargs: dict,
                      calibrated: bool, source: str | None = None) -> Path:
    """Write a `quantize_model` result as a subnet directory (state safetensors + JSON), atomically per file."""
    from safetensors.torch import save as st_save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in gm.state_dict().items()}
    atomic_write_bytes(out / STATE_FILE, st_save(state))
    doc = {"format": 1, "kind": KIND, "model": {"factory": factory, "kwargs": factory_kwargs},
           "quantize_model": gm.quantize_model_options, "layers": [ly.to_dict() for ly in gm.qc_layers],
           "config": gm.subnet_config.to_dict() if getattr(gm, "subnet_config", None) is not None else None,
           "calibrated": calibrated, "source": source}
    atomic_write_text(out / SUBNET_FILE, json.dumps(doc, indent=2))
    return out


def load_model_subnet(path: Path, doc: dict) -> tuple[None, fx.GraphModule, dict]:
    """(None, quantized model in eval mode, subnet.json) from a `quantize-model` subnet directory."""
    from safetensors.torch import load_file

    from qcompile.passes.quantize_model import quantize_model
    from qcompile.utils.state import load_state

    try:
        spec, opts = doc["model"], doc["quantize_model"]
        model = load_factory(spec["factory"], spec.get("kwargs") or {})
        policy = {k: tuple(v) for k, v in opts["policy"].items()}
        gm = quantize_model(model, policy, (torch.zeros(opts["input_shape"]),), opts["weight_init"],
                            per_channel=opts["per_channel"], estimator=opts["estimator"],
                            bits_choices=opts.get("bits_choices"))
    except KeyError as e:
        raise CheckpointError(f"{path / SUBNET_FILE}: missing field {e}") from e
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path / STATE_FILE}: missing")
    try:
        state = load_file(str(path / STATE_FILE))
    except Exception as e:
        raise CheckpointError(f"{path / STATE_FILE}: cannot be read ({e})") from e
    load_state(gm, state, str(path / STATE_FILE))
    return None, gm.eval(), doc


def _policy(text: str) -> Any:
    """`8,8` (every layer) or a JSON file / string `{"layer": [w, a], ...}`."""
    p = Path(text)
    if p.suffix == ".json" or text.lstrip().startswith("{"):
        raw = json.loads(p.read_text() if p.is_file() else text)
        if not isinstance(raw, dict):
            raise ConfigError("--policy", text, "w,a or a JSON object {layer_name: [w, a]}")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        w, a = (int(t) for t in text.split(","))
    except ValueError:
        raise ConfigError("--policy", text, "w,a (e.g. 8,8) or a JSON object {layer_name: [w, a]}") from None
    return (w, a)


def _dataset(data: str, resolution: int, in_channels: int):
    from qcompile.data import load_dataset

    if Path(data).is_dir():
        return load_dataset("image_folder", root=data, resolution=resolution, in_channels=in_channels)
    return load_dataset(data, resolution=resolution, in_channels=in_channels)


def cmd_quantize_model(args) -> int:
    """quantize_model + calibrate(bn=False) (+ optional QAT finetune) -> subnet directory."""
    from qcompile import api as qc

    kwargs = json.loads(args.factory_kwargs) if args.factory_kwargs else {}
    model = load_factory(args.model, kwargs)
    shape = tuple(args.input_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError("--input-shape", ",".join(map(str, shape)), "C,H,W with H == W")
    ds = _dataset(args.data, shape[1], shape[0])
    gm = qc.quantize_model(model, _policy(args.policy), (ds.train.images[:1],), weight_init=args.weight_init)
    qc.calibrate(gm, ds.train.loader(64, shuffle=True, seed=1), max_batches=args.calib_batches, bn=False)
    if args.finetune_epochs:
        from qcompile.train.finetune import finetune

        finetune(gm, ds, epochs=args.finetune_epochs, calib_batches=args.calib_batches)
    save_model_subnet(gm, args.out, factory=str(Path(args.model.rpartition(":")[0]).resolve()) + ":"
                      + args.model.rpartition(":")[2], factory_kwargs=kwargs, calibrated=True, source=args.data)
    print(f"quantized {len(gm.qc_layers)} layers of {args.model}; calibrated subnet written to {args.out}")
    return 0


def cmd_recalibrate_model(args, gm: fx.GraphModule, doc: dict) -> int:
    """`qcompile calibrate` on a quantize-model directory: quantizer ranges only (BN statistics kept)."""
    from qcompile import api as qc

    shape = doc["quantize_model"]["input_shape"]
    ds = _dataset(args.data, int(shape[2]), int(shape[1]))
    qc.calibrate(gm, ds.train.loader(64, shuffle=True, seed=1), max_batches=args.calib_batches, bn=False)
    out = args.out or args.subnet
    save_model_subnet(gm, out, factory=doc["model"]["factory"], factory_kwargs=doc["model"].get("kwargs") or {},
                      calibrated=True, source=args.data)
    print(f"calibrated subnet written to {out}")
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers like 3,32,32, got {text!r}") from e


def add_parser(sub: Any) -> None:
    """Register `quantize-model` on the `qcompile` subcommand parser."""
    s = sub.add_parser("quantize-model", help="quantize your own FX-traceable CNN into a calibrated subnet directory")
    s.add_argument("model", help="FILE.py:FACTORY, a callable returning the (trained) nn.Module")
    s.add_argument("--policy", default="8,8", help="w,a for every layer, or a JSON {layer_name: [w, a]} (file)")
    s.add_argument("--data", default="digits", help="calibration data: digits | an image-folder DIR")
    s.add_argument("--out", required=True, help="subnet directory (accepted by lower, export-onnx, bench)")
    s.add_argument("--input-shape", type=_ints, default=(3, 32, 32), help="C,H,W of one image (default 3,32,32)")
    s.add_argument("--weight-init", default="maxabs", choices=("maxabs", "mse", "lsq"))
    s.add_argument("--calib-batches", type=int, default=8)
    s.add_argument("--finetune-epochs", type=int, default=0, help="short QAT finetune on --data (default none)")
    s.add_argument("--factory-kwargs", default=None, help="JSON keyword arguments of FACTORY")
    s.set_defaults(fn=cmd_quantize_model)
