"""posenc.torch encodings: interpolation properties, derivatives of every order, policies, errors."""

import math

import numpy as np
import pytest
import torch

from posenc.spline import interpolate_reference
from posenc.torch import (
    ENCODINGS,
    BesselEncoding,
    GaussianEncoding,
    HermiteEncoding,
    LinearEncoding,
    MLPEncoding,
    RawEncoding,
    SmoothCutoff,
    make_encoding,
    smooth_cutoff,
)

F64 = torch.float64


def random_hermite(n_bin=9, dim=5, x_min=0.5, x_max=4.0, seed=0, **kw):
    """A Hermite encoding with random values AND slopes, so no test leans on a special table."""
    torch.manual_seed(seed)
    enc = HermiteEncoding(n_bin, dim, x_min, x_max, init="normal", dtype=F64, **kw)
    with torch.no_grad():
        enc.slopes.normal_()
    return enc


def random_linear(n_bin=9, dim=5, x_min=0.5, x_max=4.0, seed=0, **kw):
    torch.manual_seed(seed)
    return LinearEncoding(n_bin, dim, x_min, x_max, init="normal", dtype=F64, **kw)


def test_values_at_centres_equal_table():
    for enc in (random_hermite(), random_linear()):
        torch.testing.assert_close(enc(enc.centres), enc.values, rtol=0, atol=1e-12)


def test_slopes_at_centres_equal_derivative():
    enc = random_hermite()
    c = enc.centres.clone().requires_grad_(True)
    torch.testing.assert_close(enc(c, order=1), enc.slopes, rtol=0, atol=1e-12)
    # the same through autograd, one dimension at a time
    for d in range(enc.dim):
        (g,) = torch.autograd.grad(enc(c)[:, d].sum(), c)
        torch.testing.assert_close(g, enc.slopes[:, d].detach(), rtol=0, atol=1e-12)


def test_matches_numpy_reference_every_order():
    enc = random_hermite()
    lin = random_linear()
    x = torch.linspace(0.5, 4.0, 301, dtype=F64)
    v, s = enc.values.detach().numpy(), enc.slopes.detach().numpy()
    for k in range(5):
        ref = interpolate_reference(x.numpy(), v, s, 0.5, 4.0, order=k)
        np.testing.assert_allclose(enc(x, order=k).detach().numpy(), ref, atol=1e-9)
        ref = interpolate_reference(x.numpy(), lin.values.detach().numpy(), None, 0.5, 4.0, order=k)
        np.testing.assert_allclose(lin(x, order=k).detach().numpy(), ref, atol=1e-9)


def _one_sided_slopes(enc, eps):
    c = enc.centres[1:-1]
    left = enc(c - eps, order=1)
    right = enc(c + eps, order=1)
    return left, right


def test_hermite_is_c1_and_linear_is_not():
    eps = 1e-9
    h_left, h_right = _one_sided_slopes(random_hermite(), eps)
    # Hermite: one-sided derivatives agree up to O(eps * h'')
    assert (h_left - h_right).abs().max() < 1e-6
    l_left, l_right = _one_sided_slopes(random_linear(), eps)
    # linear interpolation: the derivative jumps at interior centres by the change of secant slope
    assert (l_left - l_right).abs().max() > 0.1
    # ... and the value itself stays continuous (C0)
    lin = random_linear()
    c = lin.centres[1:-1]
    assert (lin(c - eps) - lin(c + eps)).abs().max() < 1e-6


@pytest.mark.parametrize("make", [random_hermite, random_linear])
@pytest.mark.parametrize("policy", ["error", "extrapolate"])
def test_gradcheck_and_gradgradcheck(make, policy):
    # centres are 0.5, 1.375, 2.25, 3.125, 4.0: points avoid them, where h'' (C1, not C2) jumps
    enc = make(n_bin=5, dim=3, out_of_range=policy)
    x = [0.6, 0.77, 1.6, 2.2, 3.99] + ([-0.3, 4.5] if policy == "extrapolate" else [])
    x = torch.tensor(x, dtype=F64, requires_grad=True)

    def f(x, *tables):  # explicit tables, so gradcheck sees them as inputs
        return _functional(enc, x, *tables)

    inputs = (x, enc.values.detach().clone().requires_grad_(True))
    if isinstance(enc, HermiteEncoding):
        inputs += (enc.slopes.detach().clone().requires_grad_(True),)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def _functional(enc, x, values, slopes=None):
    """enc(x) as a function of explicit table tensors (swap the parameters for the inputs)."""
    saved = dict(enc._parameters)
    try:
        enc._parameters["values"] = values
        if slopes is not None:
            enc._parameters["slopes"] = slopes
        return enc(x)
    finally:
        enc._parameters.update(saved)


def test_third_order_derivative_through_autograd():
    enc = random_hermite()
    x = torch.linspace(0.6, 3.9, 17, dtype=F64, requires_grad=True)
    y = enc(x).sum()
    (g1,) = torch.autograd.grad(y, x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sum(), x, create_graph=True)
    for k, g in ((1, g1), (2, g2), (3, g3)):
        torch.testing.assert_close(g, enc(x.detach(), order=k).sum(-1), rtol=1e-10, atol=1e-10)
    # and a force-training style double backward reaches the tables
    (gv, gs) = torch.autograd.grad((g1**2).sum(), (enc.values, enc.slopes))
    assert gv.abs().sum() > 0 and gs.abs().sum() > 0


def test_third_order_through_the_table_gradient():
    # a loss on the table gradient (as in force training's second pass), differentiated w.r.t. x:
    # compare the analytic third-order path with central differences of the second-order one
    enc = random_hermite(n_bin=6, dim=3)
    x0 = torch.tensor([0.7, 2.05, 3.5], dtype=F64)  # centres are 0.5 + 0.7k: stay off them (C1, not C2)

    def table_grad_loss(x):
        x = x.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad(enc(x).pow(2).sum(), x, create_graph=True)
        (gv,) = torch.autograd.grad((g1**2).sum(), enc.values, create_graph=True)
        return (gv**2).sum(), x

    loss, x = table_grad_loss(x0)
    (analytic,) = torch.autograd.grad(loss, x)
    eps = 1e-6
    for i in range(3):
        step = torch.zeros(3, dtype=F64)
        step[i] = eps
        fd = (table_grad_loss(x0 + step)[0] - table_grad_loss(x0 - step)[0]) / (2 * eps)
        assert float(analytic[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_shapes_any_input_shape():
    enc = HermiteEncoding(16, 4, 0.0, 1.0)
    assert enc(torch.rand(2, 3, 5)).shape == (2, 3, 5, 4)
    assert enc(torch.tensor(0.5)).shape == (4,)
    assert enc(torch.zeros(0, 3)).shape == (0, 3, 4)
    assert sum(p.numel() for p in enc.parameters()) == 2 * 16 * 4
    assert sum(p.numel() for p in LinearEncoding(16, 4, 0.0, 1.0).parameters()) == 16 * 4


def test_out_of_range_error_is_default_and_clear():
    enc = HermiteEncoding(8, 2, 1.0, 2.0)
    with pytest.raises(ValueError, match=r"outside the encoding range \[1.0, 2.0\].*max 2.5"):
        enc(torch.tensor([1.5, 2.5]))
    with pytest.raises(ValueError, match="outside"):
        enc(torch.tensor([0.999]))
    enc(torch.tensor([1.0, 2.0]))  # both ends are inside


def test_clamp_policy():
    enc = random_hermite(out_of_range="clamp")
    x = torch.tensor([-3.0, 0.5, 4.0, 9.0], dtype=F64)
    out = enc(x)
    torch.testing.assert_close(out[0], enc.values[0].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[3], enc.values[-1].detach(), rtol=0, atol=1e-12)
    # constant beyond the ends: every derivative is zero there, by order= and by autograd
    for k in (1, 2):
        d = enc(x, order=k)
        assert d[[0, 3]].abs().max() == 0 and d[[1, 2]].abs().max() > 0
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(enc(xg)[:, 0].sum(), xg)
    assert g[0] == 0 and g[3] == 0


def test_extrapolate_policy_is_linear_and_c1():
    enc = random_hermite(out_of_range="extrapolate")
    lo, hi = enc.x_min, enc.x_max
    x = torch.tensor([lo - 1.0, lo - 0.1, hi + 0.3, hi + 2.0], dtype=F64, requires_grad=True)
    out = enc(x)
    v, s = enc.values.detach(), enc.slopes.detach()
    expect = torch.stack([v[0] - 1.0 * s[0], v[0] - 0.1 * s[0], v[-1] + 0.3 * s[-1], v[-1] + 2.0 * s[-1]])
    torch.testing.assert_close(out.detach(), expect, rtol=0, atol=1e-12)
    # derivatives outside: the end slope (order 1) and zero (order >= 2), via both routes
    torch.testing.assert_close(enc(x.detach(), order=1), torch.stack([s[0], s[0], s[-1], s[-1]]))
    assert enc(x.detach(), order=2).abs().max() == 0
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    torch.testing.assert_close(g, torch.stack([s[0, 0], s[0, 0], s[-1, 0], s[-1, 0]]))
    # C1 across both ends
    eps = 1e-9
    for end in (lo, hi):
        e = torch.tensor([end - eps, end + eps], dtype=F64)
        d = enc(e, order=1)
        assert (d[0] - d[1]).abs().max() < 1e-6


@pytest.mark.parametrize("policy", ["error", "clamp", "extrapolate"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_raise_under_every_policy(policy, bad):
    enc = HermiteEncoding(8, 2, 0.0, 1.0, out_of_range=policy)
    with pytest.raises(ValueError, match="NaN|inf"):
        enc(torch.tensor([0.5, bad]))


def test_input_type_errors():
    enc = HermiteEncoding(8, 2, 0.0, 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        enc(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="dtype mismatch"):
        enc(torch.tensor([0.5], dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc(np.array([0.5]))
    with pytest.raises(ValueError, match="device mismatch"):
        enc(torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="order"):
        enc(torch.tensor([0.5]), order=-1)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(n_bin=1), ValueError, "n_bin must be >= 2"),
        (dict(n_bin=8.0), TypeError, "n_bin must be an int"),
        (dict(x_min=2.0, x_max=1.0), ValueError, "x_max must be > x_min"),
        (dict(dim=0), ValueError, "dim must be >= 1"),
        (dict(out_of_range="wrap"), ValueError, "out_of_range must be one of"),
        (dict(init="uniform"), ValueError, "init must be one of"),
    ],
)
def test_construction_errors(kwargs, err, match):
    args = dict(n_bin=8, dim=2, x_min=0.0, x_max=1.0) | kwargs
    for cls in (HermiteEncoding, LinearEncoding):
        with pytest.raises(err, match=match):
            cls(**args)


@pytest.mark.parametrize("init", ["sinusoidal", "gaussian"])
def test_smooth_inits_have_exact_slopes(init):
    # the slope table is the analytic derivative of the basis that gave the values, so the
    # interpolant's derivative at the centres matches a finite difference of the interpolant
    enc = HermiteEncoding(64, 16, 0.0, 5.0, init=init, dtype=F64)
    x = torch.linspace(0.1, 4.9, 97, dtype=F64)
    eps = 1e-6
    fd = (enc(x + eps) - enc(x - eps)) / (2 * eps)
    torch.testing.assert_close(enc(x, order=1), fd, rtol=0, atol=1e-6)
    # and the interpolant stays close to the underlying smooth basis between centres
    # (largest relative deviation of the values below 2%)
    fine = enc(x).detach()
    assert fine.abs().max() <= 1.02


def test_normal_init_follows_torch_seed():
    torch.manual_seed(3)
    a = HermiteEncoding(8, 4, 0.0, 1.0, init="normal")
    torch.manual_seed(3)
    b = HermiteEncoding(8, 4, 0.0, 1.0, init="normal")
    assert torch.equal(a.values, b.values) and a.slopes.abs().max() == 0


def test_baselines_shapes_and_registry():
    x = torch.rand(3, 7) * 4 + 0.5
    built = {
        "raw": make_encoding("raw", power=2),
        "mlp": make_encoding("mlp", dim=6),
        "gaussian": make_encoding("gaussian", n_centres=50, x_min=0.0, x_max=5.0),
        "bessel": make_encoding("bessel", n_basis=8, cutoff=5.0),
        "linear": make_encoding("linear", n_bin=16, dim=6, x_min=0.0, x_max=5.0),
        "hermite": make_encoding("hermite", n_bin=16, dim=6, x_min=0.0, x_max=5.0),
        "bspline": make_encoding("bspline", n_bin=16, dim=6, x_min=0.0, x_max=5.0),
        "hermite5": make_encoding("hermite5", n_bin=16, dim=6, x_min=0.0, x_max=5.0),
    }
    assert set(built) == set(ENCODINGS)
    for name, enc in built.items():
        out = enc(x)
        assert out.shape == (3, 7, enc.dim), name
        assert torch.isfinite(out).all(), name
    with pytest.raises(ValueError, match="unknown encoding"):
        make_encoding("fourier")


def test_raw_encoding():
    x = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(RawEncoding(power=2)(x), torch.tensor([[1.0], [4.0]]))
    torch.testing.assert_close(RawEncoding(scale=0.5)(x), torch.tensor([[0.5], [1.0]]))
    with pytest.raises(ValueError, match="power"):
        RawEncoding(power=3)


def test_gaussian_encoding_values_and_trainable():
    enc = GaussianEncoding(5, 0.0, 4.0, gamma=2.0, dtype=F64)
    x = torch.tensor([1.3], dtype=F64)
    expect = torch.exp(-2.0 * (1.3 - torch.arange(5, dtype=F64)) ** 2)
    torch.testing.assert_close(enc(x)[0], expect)
    assert len(list(enc.parameters())) == 0
    assert len(list(GaussianEncoding(5, 0.0, 4.0, trainable=True).parameters())) == 2
    with pytest.raises(ValueError, match="gamma"):
        GaussianEncoding(5, 0.0, 4.0, gamma=-1.0)


def test_bessel_encoding_matches_dimenet_formula():
    c = 5.0
    enc = BesselEncoding(4, cutoff=c, dtype=F64)
    x = torch.tensor([0.7, 2.5, 4.2], dtype=F64)
    n = torch.arange(1, 5, dtype=F64)
    s = x[:, None] / c
    p = 6
    env = 1 - (p + 1) * (p + 2) / 2 * s**p + p * (p + 2) * s ** (p + 1) - p * (p + 1) / 2 * s ** (p + 2)
    expect = math.sqrt(2 / c) * torch.sin(n * math.pi * x[:, None] / c) / x[:, None] * env
    torch.testing.assert_close(enc(x), expect)
    # finite at zero, exactly zero at and beyond the cutoff
    assert torch.isfinite(enc(torch.tensor([0.0], dtype=F64))).all()
    assert enc(torch.tensor([5.0, 7.0], dtype=F64)).abs().max() == 0
    with pytest.raises(ValueError, match="x >= 0"):
        enc(torch.tensor([-0.1], dtype=F64))


def test_smooth_cutoff_is_c2_at_cutoff_and_wrapper_is_c1():
    x = torch.tensor([0.0, 2.999999, 3.0, 3.5], dtype=F64, requires_grad=True)
    u = smooth_cutoff(x, 3.0)
    assert u[0] == 1.0 and u[2] == 0.0 and u[3] == 0.0
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x)
    assert du[1:].abs().max() < 1e-4 and d2u[2:].abs().max() < 1e-12
    inner = random_hermite(x_min=0.0, x_max=4.0)
    enc = SmoothCutoff(inner, cutoff=3.0)
    r = torch.tensor([1.0, 2.9999999, 3.0, 3.7], dtype=F64, requires_grad=True)
    out = enc(r)
    assert out[2:].abs().max() == 0
    (g,) = torch.autograd.grad(out.sum(), r)
    assert g[1].abs() < 1e-4 and g[2:].abs().max() == 0
    with pytest.raises(ValueError, match="cutoff"):
        smooth_cutoff(x, 0.0)


def test_mlp_encoding_is_relu_mlp():
    torch.manual_seed(0)
    enc = MLPEncoding(dim=3, hidden=8)
    x = torch.rand(5)
    expect = enc.linear_1(torch.relu(enc.linear_0(x[:, None])))
    torch.testing.assert_close(enc(x), expect)
