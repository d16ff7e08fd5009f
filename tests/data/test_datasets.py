import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import qcompile.data as qd
from qcompile.errors import ConfigError


def np_bilinear_up(img: np.ndarray, out: int) -> np.ndarray:
    """Half-pixel bilinear resize (align_corners=False), the textbook formula, for a square 2-D image."""
    n = img.shape[0]
    scale = n / out
    src = np.clip((np.arange(out) + 0.5) * scale - 0.5, 0, n - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = src - i0
    rows = img[i0] * (1 - f)[:, None] + img[i1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]


@pytest.fixture(scope="module")
def digits32():
    return qd.digits(resolution=32, in_channels=3, seed=0)


def test_digits_split_is_deterministic_disjoint_and_stratified(digits32):
    from sklearn.datasets import load_digits

    y = load_digits().target
    tr, va, te = qd.stratified_split(y, (0.7, 0.1, 0.2), 0)
    assert len(tr) + len(va) + len(te) == 1797
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    for c in range(10):  # every class cut in the same proportions (within rounding)
        n_c = (y == c).sum()
        assert abs((y[te] == c).sum() - 0.2 * n_c) <= 1
    tr2, _, _ = qd.stratified_split(y, (0.7, 0.1, 0.2), 0)
    np.testing.assert_array_equal(tr, tr2)
    assert (len(digits32.train), len(digits32.val), len(digits32.test)) == (len(tr), len(va), len(te))
    assert digits32.train.images.shape[1:] == (3, 32, 32) and digits32.train.labels.dtype == torch.int64


def test_digits_images_are_bilinear_upsampled_and_normalised(digits32):
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, _, _ = qd.stratified_split(d.target, (0.7, 0.1, 0.2), 0)
    ref = np.stack([np_bilinear_up(d.images[i] / 16.0, 32) for i in tr])
    x = digits32.train.images.numpy()
    # Undo the normalisation with the training statistics of the reference.
    mean, std = ref.mean(), ref.std(ddof=1)
    np.testing.assert_allclose(x[:, 0] * std + mean, ref, atol=1e-5)
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    np.testing.assert_array_equal(digits32.train.labels.numpy(), d.target[tr])
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3


def test_loader_order_sharding_resume_and_resolution(digits32):
    ds = digits32.train.subset(range(100))
    ld = ds.loader(10, shuffle=True, seed=3, drop_last=True)
    ld.set_epoch(1)
    labels = [y for _, y in ld]
    idx_ref = torch.randperm(100, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))
    torch.testing.assert_close(torch.cat(labels), ds.labels[idx_ref])
    # two ranks of batch 5 see, together, the single-process batch of 10
    r0 = list(ds.loader(5, shuffle=True, seed=3, rank=0, world_size=2, drop_last=True))
    r1 = list(ds.loader(5, shuffle=True, seed=3, rank=1, world_size=2, drop_last=True))
    single = list(ds.loader(10, shuffle=True, seed=3, drop_last=True))
    for (a, ya), (b, yb), (c, yc) in zip(r0, r1, single):
        torch.testing.assert_close(torch.cat([a, b]), c)
        torch.testing.assert_close(torch.cat([ya, yb]), yc)
    # resume at batch 4 of epoch 1 gives the same remaining batches
    ld.set_epoch(1)
    ld.skip(4)
    rest = [y for _, y in ld]
    assert len(rest) == 6 and all(torch.equal(a, b) for a, b in zip(rest, labels[4:]))
    # per-batch resolution
    shapes = [x.shape[-1] for x, _ in ds.loader(10, resolution=lambda i: (24, 32)[i % 2])]
    assert shapes == [24, 32] * 5


def test_load_dataset_unknown_name_lists_known():
    with pytest.raises(ConfigError) as e:
        qd.load_dataset("imagenet-tiny")
    for name in ("digits", "cifar10", "cifar100", "image_folder"):
        assert name in str(e.value)


def _write_folder(root, split=None):
    colours = {"cat": (255, 0, 0), "dog": (0, 128, 255)}
    for cname, col in colours.items():
        for split_name in [split] if split else [None]:
            d = root / split_name / cname if split_name else root / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in range(10):
                Image.new("RGB", (20 + i, 12), col).save(d / f"{i}.png")
    return colours


def test_image_folder_flat_layout(tmp_path):
    colours = _write_folder(tmp_path)
    s = qd.load_dataset("image_folder", root=tmp_path, resolution=8)
    assert s.num_classes == 2 and len(s.train) + len(s.val) + len(s.test) == 20
    allx = torch.cat([s.train.images, s.val.images, s.test.images])
    ally = torch.cat([s.train.labels, s.val.labels, s.test.labels])
    # recover pixel values from the normalisation with the training statistics
    raw = torch.tensor([colours["cat"], colours["dog"]], dtype=torch.float32)[s.train.labels] / 255.0
    mean = raw.mean(0)
    std = torch.cat([raw[:, None].expand(-1, 64, -1)]).reshape(-1, 3).std(0).clamp_min(1e-6)
    expect = (torch.tensor([colours["cat"], colours["dog"]], dtype=torch.float32)[ally] / 255.0 - mean) / std
    torch.testing.assert_close(allx[:, :, 3, 3], expect, atol=1e-4, rtol=0)
    assert allx.shape[1:] == (3, 8, 8)


def test_image_folder_split_layout(tmp_path):
    _write_folder(tmp_path, "train")
    _write_folder(tmp_path, "val")
    s = qd.image_folder(tmp_path, resolution=6, in_channels=1)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 20, 0)
    assert s.train.images.shape == (20, 1, 6, 6)
    assert s.train.labels.tolist() == [0] * 10 + [1] * 10


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_python_batches(tmp_path, classes):
    rng = np.random.RandomState(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] if classes == 10 else ["train"]
    key = b"labels" if classes == 10 else b"fine_labels"
    data = {}
    for f in files + (["test_batch"] if classes == 10 else ["test"]):
        x = rng.randint(0, 256, size=(20, 3072), dtype=np.uint8)
        y = rng.randint(0, classes, size=20).tolist()
        data[f] = (x, y)
        with open(tmp_path / f, "wb") as fh:
            pickle.dump({b"data": x, key: y}, fh)
    s = qd.load_dataset(f"cifar{classes}", root=tmp_path, val_fraction=0.0)
    xs = np.concatenate([data[f][0] for f in files]).reshape(-1, 3, 32, 32) / 255.0
    ys = np.concatenate([data[f][1] for f in files])
    assert len(s.train) == 20 * len(files) and s.num_classes == classes
    order = np.sort(np.arange(len(ys)))  # split keeps the original order (sorted indices)
    np.testing.assert_array_equal(s.train.labels.numpy(), ys[order])
    mean = xs.mean(axis=(0, 2, 3), keepdims=True)
    std = xs.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    np.testing.assert_allclose(s.train.images.numpy(), (xs - mean) / std, atol=1e-4)
    tname = "test_batch" if classes == 10 else "test"
    np.testing.assert_array_equal(s.test.labels.numpy(), data[tname][1])
    (tmp_path / tname).unlink()
    with pytest.raises(ConfigError, match=tname):
        qd.cifar(tmp_path, num_classes=classes)
