"""Training checkpoints: tensors in safetensors, everything else in JSON, saved atomically.

Layout of a checkpoint directory:

    run/
      ckpt-00000120/tensors.safetensors   model, optimiser and trainer tensors (+ torch RNG state)
      ckpt-00000120/meta.json             format, space, config, phase/step/epoch, data position,
                                          optimiser layout, python/numpy RNG, sha256 of the tensors
      latest                              name of the newest complete checkpoint

A save writes both files into a temporary directory (each fsync'ed), renames it to a fresh
`ckpt-*` name and only then swaps `latest` (temp file + fsync + rename). A crash or error at any
point leaves `latest` on the previous complete checkpoint; loading verifies the sha256. Temporary
directories left by a writer that was killed are removed by the next save.

Fault injection (tests only): when the environment variable `QCOMPILE_CKPT_WRITE_DELAY` holds a
number of seconds, a save sleeps that long after writing the tensors into its temporary directory,
before the metadata and the renames, so that a test can SIGKILL the process mid-save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcompile.errors import CheckpointError, ConfigError
from qcompile.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT = "qcompile-train-checkpoint"
VERSION = 1
TENSORS = "tensors.safetensors"
META = "meta.json"
LATEST = "latest"
TMP_PREFIX = ".tmp-ckpt-"
WRITE_DELAY_ENV = "QCOMPILE_CKPT_WRITE_DELAY"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# -- RNG state -----------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python and NumPy generator states (JSON) and the torch CPU generator state (tensor)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return meta, {"rng.torch": torch.get_rng_state().clone()}


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore the states saved by `rng_state`."""
    try:
        v, state, gauss = meta["python"]
        random.setstate((v, tuple(state), gauss))
        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint RNG state is malformed ({e}); the file is corrupt") from e


# -- save / load ---------------------------------------------------------------------------------
def _checkpoint_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("ckpt-*") if p.is_dir())


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint `latest` points to, or None when the directory holds none."""
    directory = Path(directory)
    ptr = directory / LATEST
    if not ptr.is_file():
        return None
    try:
        name = ptr.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{ptr}: not a checkpoint name (binary data at byte {e.start}); the file is corrupt "
            f"(write the name of one of {[p.name for p in _checkpoint_dirs(directory)]} into it)"
        ) from e
    if "/" in name or "\0" in name or name in (".", ".."):
        raise CheckpointError(f"{ptr}: {name[:60]!r} is not a checkpoint name (expected ckpt-NNNNNNNN)")
    path = directory / name
    if not name or not path.is_dir():
        raise CheckpointError(
            f"{ptr}: points to {name!r}, which is not a checkpoint directory; "
            f"available: {[p.name for p in _checkpoint_dirs(directory)]}"
        )
    return path


def save_checkpoint(
    directory: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    step: int,
    keep: int = 2,
) -> Path:
    """Write a checkpoint of `tensors` and `meta` for `step` under `directory`; returns its path.

    The previous checkpoint stays intact (and `latest` keeps pointing at it) if anything fails.
    Older checkpoints beyond the newest `keep` are removed after a successful save.
    """
    from safetensors.torch import save as st_save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(directory)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=TMP_PREFIX))
    try:
        data = st_save({k: v.detach().contiguous().clone() for k, v in tensors.items()})
        digest = hashlib.sha256(data).hexdigest()
        full = {"format": FORMAT, "version": VERSION, **meta, "tensors_sha256": digest}
        text = json.dumps(full, indent=1, sort_keys=True, allow_nan=True)
        _write_synced(tmp / TENSORS, data)
        _injected_delay()
        _write_synced(tmp / META, text.encode())
        _fsync_dir(tmp)
        name = f"ckpt-{step:08d}"
        final = directory / name
        n = 0
        while final.exists():  # never overwrite a checkpoint someone may be reading
            n += 1
            final = directory / f"{name}-{n}"
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / LATEST, final.name)
    _fsync_dir(directory)
    _prune(directory, keep, final)
    logger.info("checkpoint: saved %s", final)
    return final


def _remove_stale_tmp(directory: Path) -> None:
    """Delete temporary directories of saves that never finished (the writer was killed).

    One process writes a run's checkpoints (rank 0), so any temporary directory present before a
    save starts belongs to a dead writer.
    """
    for p in directory.glob(TMP_PREFIX + "*"):
        logger.warning("checkpoint: removing %s, left by an interrupted save", p)
        shutil.rmtree(p, ignore_errors=True)


def _injected_delay() -> None:
    """Sleep `$QCOMPILE_CKPT_WRITE_DELAY` seconds mid-save (fault injection for the kill tests)."""
    value = os.environ.get(WRITE_DELAY_ENV)
    if not value:
        return
    try:
        delay = float(value)
    except ValueError as e:
        raise ConfigError(WRITE_DELAY_ENV, value, "a number of seconds") from e
    time.sleep(delay)


def _prune(directory: Path, keep: int, current: Path) -> None:
    if keep < 1:
        return
    dirs = sorted(_checkpoint_dirs(directory), key=lambda p: p.stat().st_mtime_ns)
    for p in dirs[:-keep]:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint (a `ckpt-*` directory, or a run directory: its `latest`); verify integrity."""
    from safetensors.torch import load as st_load

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / LATEST).is_file() or not (path / META).exists():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint found (neither {LATEST} nor {META})")
        path = found
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path / META}: unreadable or not JSON ({e}); the checkpoint is corrupt"
        ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path / META}: not a qcompile training checkpoint (format {FORMAT!r} expected)"
        )
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path / META}: checkpoint version {meta.get('version')!r}, this qcompile reads {VERSION}"
        )
    try:
        data = (path / TENSORS).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path / TENSORS}: cannot read ({e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{path / TENSORS}: sha256 {digest[:12]}... does not match the one recorded in {META}; "
            "the file is corrupt or was replaced. Resume from an older checkpoint or start over."
        )
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path / TENSORS}: not a valid safetensors file ({e})") from e
    meta["path"] = str(path)
    return tensors, meta
