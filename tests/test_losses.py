"""smoothness_loss in both backends against a direct numpy evaluation of the paper's formula."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import posenc.haiku as ph
import posenc.torch as pt


def numpy_smoothness(h: np.ndarray) -> float:
    """Section 3.2: sum_{i=1}^{n-1} ||h_{i+1} - h_i|| / sum_{i=1}^{n-1} ||h_i||, written out longhand."""
    n = h.shape[0]
    num = sum(np.sqrt(np.sum((h[i + 1] - h[i]) ** 2)) for i in range(n - 1))
    den = sum(np.sqrt(np.sum(h[i] ** 2)) for i in range(n - 1))
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_formula_in_both_backends(x64, seed):
    h = np.random.default_rng(seed).normal(size=(12, 7))
    expect = numpy_smoothness(h)
    assert float(pt.smoothness_loss(torch.as_tensor(h))) == pytest.approx(expect, rel=1e-12)
    assert float(ph.smoothness_loss(jnp.asarray(h))) == pytest.approx(expect, rel=1e-12)


def test_known_values_and_scale_invariance():
    const = torch.ones(5, 3)
    assert float(pt.smoothness_loss(const)) == 0.0
    ramp = torch.arange(1.0, 5.0)[:, None]  # rows 1, 2, 3, 4: diffs 1+1+1, norms 1+2+3
    assert float(pt.smoothness_loss(ramp)) == pytest.approx(3.0 / 6.0)
    h = torch.randn(9, 4)
    torch.testing.assert_close(pt.smoothness_loss(10.0 * h), pt.smoothness_loss(h))


def test_gradient_is_finite_for_a_constant_table():
    v = torch.ones(6, 3, requires_grad=True)
    (g,) = torch.autograd.grad(pt.smoothness_loss(v), v)
    assert torch.isfinite(g).all()
    gj = jax.grad(ph.smoothness_loss)(jnp.ones((6, 3)))
    assert np.isfinite(np.asarray(gj)).all()
    np.testing.assert_allclose(np.asarray(gj), g.numpy(), atol=1e-7)


def test_errors():
    for loss, arr in ((pt.smoothness_loss, torch.zeros), (ph.smoothness_loss, jnp.zeros)):
        with pytest.raises(ValueError, match="all-zero"):
            loss(arr((4, 2)))
        with pytest.raises(ValueError, match=r"\[n_bin >= 2, dim\]"):
            loss(arr((1, 2)))
        with pytest.raises(ValueError, match=r"\[n_bin >= 2, dim\]"):
            loss(arr((4,)))
    assert np.isnan(jax.jit(ph.smoothness_loss)(jnp.zeros((4, 2))))


def test_total_smoothness_loss_sums_table_encodings():
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "a": pt.HermiteEncoding(8, 3, 0.0, 1.0, init="normal"),
        "b": nn.Sequential(pt.LinearEncoding(6, 2, 0.0, 1.0, init="normal")),
        "c": pt.GaussianEncoding(5, 0.0, 1.0),
    })
    expect = pt.smoothness_loss(model["a"].values) + pt.smoothness_loss(model["b"][0].values)
    torch.testing.assert_close(pt.total_smoothness_loss(model), expect)
    assert float(pt.total_smoothness_loss(nn.Linear(2, 2))) == 0.0

    def net(x):
        return ph.HermiteEncoding(8, 3, 0.0, 1.0, init="normal")(x).sum() + ph.MLPEncoding(2)(x).sum()

    params = hk.transform(net).init(jax.random.PRNGKey(0), jnp.full(3, 0.5))
    expect_j = ph.smoothness_loss(params["hermite_encoding"]["values"])
    assert float(ph.total_smoothness_loss(params)) == pytest.approx(float(expect_j))
