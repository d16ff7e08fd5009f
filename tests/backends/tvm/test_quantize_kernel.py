"""The input quantize kernel (`kernels.quantize`, default schedule) bit-exact against `qcompile.ops.reference`.

The kernel clamps the float64 product to `quantize_product_bounds` and truncates the sum instead of flooring and
clamping it; these tests put inputs on the places where the two forms could part: sums that are exact integers
(ties of the floor), one ulp either side of them, the codes 0 and qmax and the products just past the bounds.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import te  # noqa: E402

from qcompile.backends.tvm import kernels as K  # noqa: E402
from qcompile.backends.tvm.pipeline import schedule_primfunc  # noqa: E402
from qcompile.backends.tvm.targets import host_x86_target  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402


def _kernel(shape: tuple[int, ...], inv_scale: float, offset: float, qmax: int, product_bounds: bool = True):
    """The kernel as the emitter builds it (default schedule: vectorised where the size allows), as a function."""
    xt = te.placeholder(shape, "float32", name="x")
    q = K.quantize(xt, inv_scale, offset, qmax, product_bounds=product_bounds)
    return _as_function(schedule_primfunc(te.create_prim_func([xt, q]), "quantize"), shape)


def _as_function(func, shape: tuple[int, ...]):
    """A quantize PrimFunc compiled for this host's 2-core target, as float32 array -> uint8 codes."""
    lib = tvm.compile(func, target=tvm.target.Target(host_x86_target(2)))
    dev = tvm.cpu()

    def run(x: np.ndarray) -> np.ndarray:
        out = tvm.runtime.tensor(np.zeros(shape, np.uint8), dev)
        lib["main"](tvm.runtime.tensor(x, dev), out)
        return out.numpy()

    return run


def _run(x: np.ndarray, inv_scale: float, offset: float, qmax: int) -> np.ndarray:
    return _kernel(x.shape, inv_scale, offset, qmax)(x)


def _reference(x: np.ndarray, inv_scale: float, offset: float, qmax: int) -> np.ndarray:
    return R.quantize(torch.from_numpy(x), inv_scale, offset, qmax).numpy()


def _boundary_inputs(rng: np.random.Generator, n: int, inv_scale: float, offset: float, qmax: int) -> np.ndarray:
    """float32 inputs whose float64 sums land on the integers -2..qmax+2 (ties of the floor), the float32
    neighbours of those inputs, and random values across and beyond the code range."""
    codes = np.arange(-2, qmax + 3, dtype=np.float64)
    exact = ((codes - offset) / inv_scale).astype(np.float32)
    near = np.concatenate([exact, np.nextafter(exact, np.float32(np.inf)), np.nextafter(exact, np.float32(-np.inf))])
    span = (qmax + 4) / abs(inv_scale)
    rand = (rng.uniform(-span, span, n) - offset / inv_scale).astype(np.float32)
    return np.concatenate([near, rand])


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (1, 3, 7, 5), (2, 3, 17, 16)])
@pytest.mark.parametrize(("inv_scale", "offset", "qmax"), [
    (32.0, 128.5, 255),  # MobileNetV2 224's input quantizer in the peer harness: power-of-two scale
    (1 / 0.018712, 114.5, 255),  # a calibrated scale, integer zero point + 0.5
    (41.37, 3.2871, 15),  # 4 bits, fractional zero point
    (7.3, 0.5, 1),  # 1 bit: one code boundary
    (-13.1, 200.75, 255),  # negative scale: the product bounds do not rely on the sign
])
def test_quantize_kernel_bit_exact(shape, inv_scale, offset, qmax):
    rng = np.random.default_rng(int(qmax) + len(shape))
    n = math.prod(shape)
    vals = rng.permutation(_boundary_inputs(rng, n, inv_scale, offset, qmax))
    run = _kernel(shape, inv_scale, offset, qmax)
    seen: set[int] = set()
    for start in range(0, len(vals), n):  # every boundary input, in as many calls as the shape needs
        x = np.resize(vals[start:start + n], shape).astype(np.float32)
        got = run(x)
        np.testing.assert_array_equal(got, _reference(x, inv_scale, offset, qmax))
        seen |= set(np.unique(got).tolist())
    assert seen == set(range(qmax + 1))  # every code, both clamp bounds included


def _rounded_up_products(inv_scale: float, count: int) -> list[tuple[float, float]]:
    """float32 inputs `x` (around 100 / inv_scale) whose float64 product `p = x * inv_scale` rounded up, with `p`."""
    found = []
    for j in range(1, 10_000):
        x = float(np.float32(100.0 / inv_scale + j * 1e-3))
        p = x * inv_scale
        if Fraction(p) > Fraction(x) * Fraction(inv_scale):
            found.append((x, p))
            if len(found) == count:
                return found
    raise AssertionError("no rounded-up products")


@pytest.mark.parametrize("code", [1, 2, 200])
def test_quantize_kernel_rounds_product_before_add(code):
    """The product is rounded to float64 before the offset is added (the contract's two roundings, not one fused
    multiply-add): with `offset = code - p` the sum is exactly `code`, while the exact `x * inv_scale + offset`
    lies just below it, so a fused multiply-add would give `code - 1`. Codes near 0 make the sum's ulp finer than
    the product's rounding error, which is where the two differ."""
    inv_scale = 1 / 0.018712
    for x, p in _rounded_up_products(inv_scale, 3):
        offset = code - p
        assert Fraction(offset) == code - Fraction(p)  # exact: the sum below is exactly `code`
        assert Fraction(x) * Fraction(inv_scale) + Fraction(offset) < code
        xs = np.resize(np.array([x, np.nextafter(np.float32(x), np.float32(np.inf)), -1e3, 1e3], np.float32),
                       (1, 3, 16, 16))
        got = _run(xs, inv_scale, offset, 255)
        np.testing.assert_array_equal(got, _reference(xs, inv_scale, offset, 255))
        assert got.ravel()[0] == code


def test_quantize_kernel_floor_form_bit_exact():
    """`product_bounds=False` (the floor-and-clamp kernel, kept for `benchmarks.front`) gives the same codes."""
    rng = np.random.default_rng(5)
    shape = (1, 3, 16, 16)
    vals = rng.permutation(_boundary_inputs(rng, 768, 1 / 0.018712, 114.5, 255))
    run = _kernel(shape, 1 / 0.018712, 114.5, 255, product_bounds=False)
    for start in range(0, len(vals), 768):
        x = np.resize(vals[start:start + 768], shape).astype(np.float32)
        np.testing.assert_array_equal(run(x), _reference(x, 1 / 0.018712, 114.5, 255))


def test_quantize_kernel_large_offset_keeps_floor_form():
    """An offset beyond the product bounds' range keeps the floor-and-clamp form, still bit-exact."""
    offset = 2.0**40
    assert K.quantize_product_bounds(offset, 255) is None
    x = np.array([-(2.0**40) - 3, -(2.0**40), -(2.0**40) + 100.5, 0.0, 1.0, 3e12], np.float32).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(_run(x, 1.0, offset, 255), _reference(x, 1.0, offset, 255))


def test_quantize_kernel_nan_and_inf_unchanged():
    """NaN and +inf give qmax, -inf gives 0, as the floor-and-clamp kernel did (the `min` on the product comes
    first and returns its bound on NaN); the network refuses such inputs before any kernel runs."""
    x = np.resize(np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32), (1, 3, 8, 8))
    got = _run(x, 0.37, 3.25, 255).ravel()[:6]
    assert got.tolist() == [255, 255, 255, 0, 3, 3]


@pytest.mark.parametrize("qmax", [1, 15, 255])
def test_quantize_product_bounds(qmax):
    """At the bounds and one ulp beyond them, `trunc(clamp(p) + offset)` equals `clamp(floor(p + offset))` in
    float64, for offsets of every magnitude the kernel takes."""
    rng = np.random.default_rng(qmax)
    offsets = np.concatenate([rng.uniform(-300, 300, 200), rng.uniform(-1e9, 1e9, 50), [0.0, 0.5, -0.5, 1e-300,
                              2.0**39, -(2.0**39)], np.arange(-3, qmax + 3) + 0.5])
    for off in offsets.tolist():
        p_lo, p_hi = K.quantize_product_bounds(off, qmax)
        assert p_lo + off == 0.0 and qmax <= p_hi + off < qmax + 1
        for p in (p_lo, p_hi, *(math.nextafter(b, d) for b in (p_lo, p_hi) for d in (-math.inf, math.inf))):
            want = min(max(math.floor(p + off), 0), qmax)
            assert math.trunc(min(max(p, p_lo), p_hi) + off) == want, (off, p)


def _checked(shape: tuple[int, ...], inv_scale: float, offset: float, qmax: int, chunks: int):
    """`kernels.quantize_checked` (the input quantize with the driver's NaN/inf check folded in) as a function."""
    func = K.quantize_checked(shape, "float32", inv_scale, offset, qmax, chunks)
    assert func is not None
    return _as_function(func, shape)


# (shape, chunks): MobileNetV2's input in 2 chunks of 4704 vectors; 105 values in 3 chunks of 2 vectors and 9 after
# the join; 1632 in 2 chunks (51 vectors each, none after); 105 in 1 chunk (6 vectors and 9 after)
CHECKED_SHAPES = [((1, 3, 224, 224), 2), ((1, 3, 7, 5), 3), ((2, 3, 17, 16), 2), ((1, 3, 7, 5), 1)]


@pytest.mark.parametrize(("shape", "chunks"), CHECKED_SHAPES)
@pytest.mark.parametrize(("inv_scale", "offset", "qmax"), [(32.0, 128.5, 255), (1 / 0.018712, 114.5, 255),
                                                           (41.37, 3.2871, 15), (-13.1, 200.75, 255)])
def test_quantize_checked_bit_exact(shape, chunks, inv_scale, offset, qmax):
    """The quantize with the finiteness check folded in (issue 20, session 16) gives the reference codes for every
    boundary input (ties of the floor, one ulp either side, every code), in its chunks and after them."""
    rng = np.random.default_rng(int(qmax) + chunks)
    n = math.prod(shape)
    vals = rng.permutation(_boundary_inputs(rng, n, inv_scale, offset, qmax))
    run = _checked(shape, inv_scale, offset, qmax, chunks)
    seen: set[int] = set()
    for start in range(0, len(vals), n):
        x = np.resize(vals[start:start + n], shape).astype(np.float32)
        got = run(x)
        np.testing.assert_array_equal(got, _reference(x, inv_scale, offset, qmax))
        seen |= set(np.unique(got).tolist())
    assert seen == set(range(qmax + 1))


def test_quantize_checked_rounds_product_before_add():
    """No fused multiply-add in the checked kernel either (`test_quantize_kernel_rounds_product_before_add`)."""
    inv_scale = 1 / 0.018712
    for x, p in _rounded_up_products(inv_scale, 3):
        offset = 2 - p
        xs = np.resize(np.array([x, -1e3, 1e3], np.float32), (1, 3, 16, 16))
        got = _checked(xs.shape, inv_scale, offset, 255, 2)(xs)
        np.testing.assert_array_equal(got, _reference(xs, inv_scale, offset, 255))
        assert got.ravel()[0] == 2


@pytest.mark.parametrize(("shape", "chunks"), CHECKED_SHAPES[1:])
def test_quantize_checked_refuses_nan_and_inf(shape, chunks):
    """The checked quantize passes the largest finite values, subnormals and signed zeros, and fails as
    `driver.finite_check` does on NaN (either sign) and +-inf at each chunk's first and last value and after the
    chunks (the values the join handles)."""
    n = math.prod(shape)
    run = _checked(shape, 0.37, 3.25, 255, chunks)
    fi = np.finfo(np.float32)
    ok = np.resize(np.array([fi.max, -fi.max, fi.smallest_subnormal, -fi.tiny, 0.0, -0.0, 1.5], np.float32), shape)
    np.testing.assert_array_equal(run(ok), _reference(ok, 0.37, 3.25, 255))
    per = n // (chunks * 16) * 16
    positions = sorted({0, n - 1, *(c * per for c in range(chunks)), *(c * per + per - 1 for c in range(chunks)),
                        min(chunks * per, n - 1)})
    for bad in (np.nan, -np.nan, np.inf, -np.inf):
        for pos in positions:
            y = ok.copy()
            y.flat[pos] = bad
            with pytest.raises(Exception, match="non-finite"):
                run(y)


def test_quantize_checked_needs_the_clamped_product_form_and_a_float_dtype():
    """None (the driver keeps its separate check) where the kernel's form would not be `quantize`'s: an offset
    too large for the product bounds, or an input that is not float16/32/64."""
    assert K.quantize_checked((1, 3, 4, 4), "float32", 1.0, 2.0**40, 255) is None
    assert K.quantize_checked((1, 3, 4, 4), "int32", 1.0, 0.5, 255) is None
