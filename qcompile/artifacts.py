"""On-disk artifacts shared by the CLI commands: a training run, a subnet, (lowered dirs live in backends).

- run directory (`qcompile train --out DIR`): `run.json` (space, quantize options, recipe) and
  `checkpoints/` (the trainer's atomic checkpoints, safetensors + JSON).
- subnet directory (`qcompile extract/calibrate --out DIR`): `subnet.json` (config, space, quantize
  options, whether calibrated, the run it came from) and `state.safetensors` (the static subnet's
  state dict). Loading rebuilds the subnet by slicing a fresh supernet of the same space and loads
  the state: no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch import fx

from qcompile import schema
from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError
from qcompile.utils.io import MARKERS, atomic_write_text, check_out, staged_dir  # noqa: F401 (re-exported)
from qcompile.utils.state import load_state as _load_state

RUN_FILE = "run.json"
SUBNET_FILE = "subnet.json"
STATE_FILE = "state.safetensors"



def _read_json(path: Path, what: str, spec: dict | None = None, current: int | None = None) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}); the file is corrupt ({what})") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno}) ({what})") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: JSON nested too deeply; the file is corrupt ({what})") from e
    if spec is not None:
        schema.check(doc, spec, str(path), current)
    return doc


def build_quantized_supernet(space_dict: dict, quantize_options: dict | None,
                             where: str = "artifact") -> tuple[Any, fx.GraphModule]:
    """(space, graph): the traced supernet, quantized with `quantize_options` (None = float)."""
    from qcompile import api as qc
    from qcompile.spaces import from_dict

    try:
        space = from_dict(space_dict)
    except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{where}: space {space_dict.get('name')!r} cannot be rebuilt from its recorded "
                              f"arguments ({e}) (the artifact is corrupt or from another qcompile)") from e
    graph = qc.trace(space.build_supernet())
    if quantize_options is not None:
        try:
            graph = qc.quantize(graph, **quantize_options)
        except (TypeError, ValueError) as e:  # unknown option names, values of the wrong kind
            raise CheckpointError(f"{where}: quantize options {quantize_options!r:.80} cannot be applied ({e}) "
                                  "(the artifact is corrupt or from another qcompile)") from e
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
    doc = _read_json(run_dir / RUN_FILE, "written by `qcompile train`", schema.RUN, schema.RUN_FORMAT)
    space, graph = build_quantized_supernet(doc["space"], doc.get("quantize"), str(run_dir / RUN_FILE))
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint yet (train first)")
    tensors, meta = load_checkpoint(ckpt)
    ck_space = meta.get("space") if isinstance(meta.get("space"), dict) else {}
    if ck_space.get("name") not in (None, space.name):
        raise CheckpointError(f"{ckpt}: checkpoint of space {ck_space.get('name')!r}, run is {space.name!r}")
    if ck_space.get("args") not in (None, space.to_dict().get("args")):
        raise CheckpointError(f"{ckpt}: checkpoint of space arguments {ck_space.get('args')}, but "
                              f"{run_dir / RUN_FILE} says {space.to_dict().get('args')} (run.json was changed)")
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_state(graph, state, str(ckpt))
    return space, graph, doc


def save_subnet(sub: fx.GraphModule, out: str | os.PathLike, *, space, quantize_options: dict | None,
                calibrated: bool, source: str | None = None) -> Path:
    """Write a subnet directory (config JSON + state safetensors) as a whole: into a fresh directory beside
    `out`, swapped in at the end. `out` must be new, empty, or a subnet directory (`check_out`)."""
    from safetensors.torch import save as st_save

    cfg: SubnetConfig = sub.subnet_config
    out = check_out(out, "subnet")
    state = {k: v.detach().contiguous() for k, v in sub.state_dict().items()}
    data = st_save(state)
    doc = {"format": schema.SUBNET_FORMAT, "config": cfg.to_dict(), "space": space.to_dict(),
           "quantize": quantize_options, "calibrated": calibrated, "source": source,
           "state_sha256": hashlib.sha256(data).hexdigest()}
    with staged_dir(out) as tmp:
        (tmp / STATE_FILE).write_bytes(data)
        (tmp / SUBNET_FILE).write_text(json.dumps(doc, indent=2))
        for f in (STATE_FILE, SUBNET_FILE):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
    return out


def load_subnet(path: str | os.PathLike) -> tuple[Any, fx.GraphModule, dict]:
    """(space, static subnet in eval mode, subnet.json) from a subnet directory (space None for a
    `qcompile quantize-model` directory)."""
    from safetensors.torch import load as load_st

    from qcompile import api as qc

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such subnet directory (make one with `qcompile extract --out DIR`)")
    doc = _read_json(path / SUBNET_FILE, "written by `qcompile extract`")
    if isinstance(doc, dict) and doc.get("kind") == "model":  # written by `qcompile quantize-model`: no space
        from qcompile.model_artifacts import load_model_subnet

        return load_model_subnet(path, doc)
    schema.check(doc, schema.SUBNET, str(path / SUBNET_FILE), schema.SUBNET_FORMAT)
    try:
        cfg = SubnetConfig.from_dict(doc["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path / SUBNET_FILE}: bad config ({e})") from e
    space, graph = build_quantized_supernet(doc["space"], doc.get("quantize"), str(path / SUBNET_FILE))
    try:
        space.validate(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{path / SUBNET_FILE}: config does not fit its space {space.name} ({e}) "
                              "(extract the subnet again)") from e
    sub = qc.extract(graph, cfg)
    spath = path / STATE_FILE
    if not os.path.lexists(spath):
        raise CheckpointError(f"{spath}: missing (the subnet directory is incomplete; extract it again)")
    try:
        data = spath.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{spath}: cannot be read: {e.strerror or e} (check the file)") from e
    want = doc.get("state_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise CheckpointError(f"{spath}: sha256 does not match the one in {SUBNET_FILE}; the file is corrupt "
                              "or was replaced (extract the subnet again)")
    try:
        state = load_st(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{spath}: not a valid safetensors file ({str(e).splitlines()[0] if str(e) else e!r})"
                              " (extract the subnet again)") from e
    _load_state(sub, state, str(path / STATE_FILE))
    sub.eval()
    return space, sub, doc
