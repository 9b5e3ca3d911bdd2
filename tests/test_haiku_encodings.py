"""posenc.haiku encodings: derivatives by check_grads, eager/jit error policy, equality with torch."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

import posenc.haiku as ph
import posenc.torch as pt
from posenc.convert import haiku_to_torch, torch_to_haiku

F64 = torch.float64


def transformed(cls, *args, **kwargs):
    """(init, apply) of ``cls(*args, **kwargs)(x, order)`` without an apply RNG."""
    return hk.without_apply_rng(hk.transform(lambda x, order=0: cls(*args, **kwargs)(x, order)))


def torch_pair(cls_name, n_bin=9, dim=5, x_min=0.5, x_max=4.0, seed=0, **kw):
    """A torch table encoding with random tables and its Haiku params (via convert)."""
    torch.manual_seed(seed)
    enc = getattr(pt, cls_name)(n_bin, dim, x_min, x_max, init="normal", dtype=F64, **kw)
    if cls_name == "HermiteEncoding":
        with torch.no_grad():
            enc.slopes.normal_()
    name = {"HermiteEncoding": "hermite_encoding", "LinearEncoding": "linear_encoding"}[cls_name]
    return enc, torch_to_haiku(enc, name)


@pytest.mark.parametrize("cls_name", ["HermiteEncoding", "LinearEncoding"])
@pytest.mark.parametrize("policy", ["error", "clamp", "extrapolate"])
def test_torch_and_haiku_agree(x64, cls_name, policy):
    enc, params = torch_pair(cls_name, out_of_range=policy)
    f = transformed(getattr(ph, cls_name), 9, 5, 0.5, 4.0, out_of_range=policy)
    rng = np.random.default_rng(1)
    centres = np.linspace(0.5, 4.0, 9)
    xs = [rng.uniform(0.5, 4.0, 200), centres, np.array([0.5, 4.0])]
    if policy != "error":
        xs.append(np.array([-1.0, 0.2, 4.3, 7.0]))
    for x in xs:
        for order in range(4):
            got = np.asarray(f.apply(params, jnp.asarray(x), order))
            ref = enc(torch.as_tensor(x), order=order).detach().numpy()
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))


def test_round_trip_through_conversion(x64):
    enc, params = torch_pair("HermiteEncoding")
    back = pt.HermiteEncoding(9, 5, 0.5, 4.0, dtype=F64)
    haiku_to_torch(params, back, "hermite_encoding")
    assert torch.equal(back.values, enc.values) and torch.equal(back.slopes, enc.slopes)
    x = torch.rand(50, dtype=F64) * 3.5 + 0.5
    torch.testing.assert_close(back(x), enc(x), rtol=0, atol=1e-12)
    with pytest.raises(KeyError, match="no hermite_encoding/slopes"):
        haiku_to_torch({"hermite_encoding": {"values": params["hermite_encoding"]["values"]}}, back, "hermite_encoding")
    with pytest.raises(ValueError, match="shape"):
        haiku_to_torch(params, pt.HermiteEncoding(8, 5, 0.5, 4.0, dtype=F64), "hermite_encoding")
    extra = {"hermite_encoding": dict(params["hermite_encoding"], bias=np.zeros(5))}
    with pytest.raises(KeyError, match="no torch counterpart"):
        haiku_to_torch(extra, back, "hermite_encoding")


def test_same_deterministic_init_in_both_backends(x64):
    for init in ("sinusoidal", "gaussian"):
        enc = pt.HermiteEncoding(32, 8, 0.0, 5.0, init=init, dtype=F64)
        f = transformed(ph.HermiteEncoding, 32, 8, 0.0, 5.0, init=init)
        params = f.init(None, jnp.zeros(2))
        np.testing.assert_array_equal(params["hermite_encoding"]["values"], enc.values.detach().numpy())
        np.testing.assert_array_equal(params["hermite_encoding"]["slopes"], enc.slopes.detach().numpy())


@pytest.mark.parametrize("cls_name", ["HermiteEncoding", "LinearEncoding"])
def test_check_grads_to_second_order(x64, cls_name):
    _, params = torch_pair(cls_name, n_bin=5, dim=3)
    f = transformed(getattr(ph, cls_name), 5, 3, 0.5, 4.0)
    x = jnp.asarray([0.6, 0.77, 1.6, 2.2, 3.99])  # away from centres, where h'' jumps
    apply = jax.jit(f.apply)
    check_grads(lambda x: apply(params, x), (x,), order=2, modes=["fwd", "rev"])
    check_grads(lambda p: apply(p, x), (params,), order=2, modes=["fwd", "rev"])


def test_jax_derivatives_match_order_argument(x64):
    _, params = torch_pair("HermiteEncoding")
    f = transformed(ph.HermiteEncoding, 9, 5, 0.5, 4.0)
    x = jnp.linspace(0.6, 3.9, 13)
    apply = jax.jit(f.apply, static_argnums=2)
    h = lambda x: apply(params, x, 0)  # noqa: E731
    for k in (1, 2, 3):
        h = _derivative(h)
        np.testing.assert_allclose(jax.jit(h)(x), apply(params, x, k), atol=1e-9)


def _derivative(fn):
    """Elementwise d/dx of ``fn: [E] -> [E, D]`` via a JVP with a ones tangent."""
    return lambda x: jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]


def test_eager_errors_and_nan_under_jit():
    f = transformed(ph.HermiteEncoding, 8, 2, 1.0, 2.0)
    params = f.init(None, jnp.zeros(1) + 1.5)
    with pytest.raises(ValueError, match=r"outside the encoding range \[1.0, 2.0\]"):
        f.apply(params, jnp.asarray([1.5, 2.5]))
    with pytest.raises(ValueError, match="NaN"):
        f.apply(params, jnp.asarray([1.5, jnp.nan]))
    with pytest.raises(TypeError, match="floating-point"):
        f.apply(params, jnp.asarray([1, 2]))
    jitted = jax.jit(f.apply)
    out = np.asarray(jitted(params, jnp.asarray([1.5, 2.5, jnp.nan])))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all() and np.isnan(out[2]).all()
    g = transformed(ph.HermiteEncoding, 8, 2, 1.0, 2.0, out_of_range="clamp")
    out = np.asarray(jax.jit(g.apply)(params, jnp.asarray([2.5, jnp.inf, jnp.nan])))
    assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(n_bin=1), ValueError, "n_bin must be >= 2"),
        (dict(x_min=2.0, x_max=1.0), ValueError, "x_max must be > x_min"),
        (dict(out_of_range="wrap"), ValueError, "out_of_range must be one of"),
    ],
)
def test_construction_errors(kwargs, err, match):
    args = dict(n_bin=8, dim=2, x_min=0.0, x_max=1.0) | kwargs
    f = hk.transform(lambda x: ph.HermiteEncoding(**args)(x))
    with pytest.raises(err, match=match):
        f.init(jax.random.PRNGKey(0), jnp.zeros(2))


def test_shapes_and_parameter_count():
    f = transformed(ph.HermiteEncoding, 16, 4, 0.0, 1.0)
    params = f.init(None, jnp.zeros((2, 3)))
    assert f.apply(params, jnp.full((2, 3, 5), 0.5)).shape == (2, 3, 5, 4)
    assert f.apply(params, jnp.zeros((0,))).shape == (0, 4)
    assert sum(a.size for a in jax.tree.leaves(params)) == 2 * 16 * 4


def test_normal_init_uses_haiku_rng():
    f = hk.transform(lambda x: ph.HermiteEncoding(8, 3, 0.0, 1.0, init="normal")(x))
    a = f.init(jax.random.PRNGKey(0), jnp.zeros(1))["hermite_encoding"]
    b = f.init(jax.random.PRNGKey(1), jnp.zeros(1))["hermite_encoding"]
    assert not np.allclose(a["values"], b["values"]) and not np.asarray(a["slopes"]).any()


def test_baselines_agree_with_torch(x64):
    x = np.random.default_rng(0).uniform(0.0, 6.0, (4, 5))
    cases = [
        (pt.RawEncoding(scale=0.5, power=2), lambda: ph.RawEncoding(scale=0.5, power=2), None),
        (pt.GaussianEncoding(20, 0.0, 5.0, dtype=F64), lambda: ph.GaussianEncoding(20, 0.0, 5.0), None),
        (pt.BesselEncoding(6, 5.0, dtype=F64), lambda: ph.BesselEncoding(6, 5.0), None),
        (pt.MLPEncoding(4, hidden=8, dtype=F64), lambda: ph.MLPEncoding(4, hidden=8), "mlp_encoding"),
        (
            pt.SmoothCutoff(pt.HermiteEncoding(16, 3, 0.0, 6.0, dtype=F64), 4.0),
            lambda: ph.SmoothCutoff(ph.HermiteEncoding(16, 3, 0.0, 6.0), 4.0),
            None,
        ),
    ]
    for t_enc, make, name in cases:
        f = hk.without_apply_rng(hk.transform(lambda x, make=make: make()(x)))
        params = f.init(jax.random.PRNGKey(0), jnp.asarray(x))
        if name is not None:
            params = torch_to_haiku(t_enc, name)
        got = np.asarray(f.apply(params, jnp.asarray(x)))
        ref = t_enc(torch.as_tensor(x)).detach().numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10, err_msg=type(t_enc).__name__)
    assert set(ph.ENCODINGS) == set(pt.ENCODINGS)


def test_conversion_keeps_scalar_parameters():
    t_enc = pt.GaussianEncoding(5, 0.0, 4.0, trainable=True, dtype=F64)  # gamma is a 0-d parameter
    params = torch_to_haiku(t_enc, "gaussian_encoding")
    params["gaussian_encoding"]["gamma"] = jnp.asarray(3.0)  # a read-only JAX array, 0-d
    haiku_to_torch(params, t_enc, "gaussian_encoding")
    assert t_enc.gamma.shape == () and float(t_enc.gamma) == 3.0
    with pytest.raises(ValueError, match="unknown encoding"):
        ph.make_encoding("fourier")


def test_project_all_folds_tables_like_torch(x64):
    """One interpolation of the mapped, stacked tables equals each encoding followed by its map."""
    from posenc.haiku.encodings import project_all

    weights = [np.random.default_rng(k).normal(size=(5, k + 2)) for k in range(3)]
    x = jnp.asarray([0.0, 0.3, 2.2, 3.99, 4.5])  # 4.5: the linear extension

    def forward(x):
        encs = [ph.HermiteEncoding(12, 5, 0.0, 4.0, out_of_range="extrapolate", name=f"e{k}") for k in range(3)]
        folded = project_all(encs, [jnp.asarray(w) for w in weights], x)
        return folded, [e(x) @ w for e, w in zip(encs, weights)]

    f = hk.without_apply_rng(hk.transform(forward))
    folded, plain = f.apply(f.init(None, x), x)
    for a, b in zip(folded, plain):
        np.testing.assert_allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        hk.transform(lambda x: project_all([ph.RawEncoding()], [], x)).init(None, x)
