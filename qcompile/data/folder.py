"""Image-folder datasets read with PIL: `root/<split>/<class>/<image>` or `root/<class>/<image>`.

Class indices are the sorted class-directory names (as torchvision's ImageFolder does). Images are
converted to RGB (or L for one channel), resized bilinearly to `resolution`, scaled to [0, 1] and
normalised with the training split's per-channel statistics. Without split directories the images
are split deterministically per class (`qcompile.data.digits.stratified_split`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from qcompile.data.base import ArrayDataset, DatasetSplits
from qcompile.data.digits import normalise, stratified_split
from qcompile.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def _read_classes(
    root: Path, classes: list[str], resolution: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for ci, cname in enumerate(classes):
        cdir = root / cname
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((resolution, resolution), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as e:
                raise ConfigError("image", str(f), "a readable image file", str(e)) from e
            images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            labels.append(ci)
    if not images:
        return np.zeros((0, 1 if mode == "L" else 3, resolution, resolution), np.float32), np.zeros(
            0, np.int64
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def image_folder(
    root: str | os.PathLike,
    resolution: int = 32,
    in_channels: int = 3,
    seed: int = 0,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> DatasetSplits:
    """Load `root` as an image-folder dataset (see module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("root", str(root), "an existing directory of class folders")
    if in_channels not in (1, 3):
        raise ConfigError("in_channels", in_channels, (1, 3), "image folders are read as L or RGB")
    mode = "L" if in_channels == 1 else "RGB"
    has_splits = (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir())
    base = root / "train" if has_splits else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError("root", str(base), "a directory with one sub-directory per class")
    if has_splits:
        parts = [_read_classes(root / s, classes, resolution, mode) for s in ("train", "val", "test")]
    else:
        x, y = _read_classes(root, classes, resolution, mode)
        idx = stratified_split(y, split, seed)
        parts = [(x[i], y[i]) for i in idx]
    if len(parts[0][1]) == 0:
        raise ConfigError("root", str(base), "at least one training image", f"extensions: {IMAGE_EXTENSIONS}")
    xs = normalise(*(torch.from_numpy(p[0]) for p in parts))
    name = root.name
    return DatasetSplits(
        *(
            ArrayDataset(xi.contiguous(), torch.from_numpy(p[1]), len(classes), f"{name}/{s}")
            for xi, p, s in zip(xs, parts, ("train", "val", "test"))
        )
    )
