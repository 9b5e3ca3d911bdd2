"""The C2 table encodings (B-spline, quintic Hermite): bases, centres, derivatives to third order,
continuity at every centre, range policies, torch-Haiku equality, and their place in training."""

import json

import haiku as hk
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import posenc.haiku as ph
import posenc.torch as pt
from posenc.cli import main
from posenc.convert import haiku_to_torch, torch_to_haiku
from posenc.encoding_defaults import TABLE_ENCODINGS, distance_encoding_kwargs
from posenc.init import initial_curvatures, sinusoidal_tables
from posenc.interpret import sample, tables_from_haiku, tables_from_torch
from posenc.spline import (
    BSPLINE_POWER_COEFFS,
    QUINTIC_HERMITE_POWER_COEFFS,
    bspline_interpolation_matrix,
    derivative_coeffs,
    interpolate_reference,
)
from posenc.torch.models import make_model
from posenc.torch.models.dimenet import DimeNetPlusPlus
from posenc.training import TrainConfig, encoding_overrides, resolve

F64 = torch.float64
N_BIN, DIM, X_MIN, X_MAX = 9, 5, 0.5, 4.0
C2 = ["BSplineEncoding", "QuinticHermiteEncoding"]
HAIKU_NAME = {"BSplineEncoding": "b_spline_encoding", "QuinticHermiteEncoding": "quintic_hermite_encoding",
              "HermiteEncoding": "hermite_encoding"}


def random_encoding(cls_name: str, seed: int = 0, **kw) -> torch.nn.Module:
    """A float64 torch table encoding whose every table is random (not only smooth initial ones)."""
    torch.manual_seed(seed)
    enc = getattr(pt, cls_name)(N_BIN, DIM, X_MIN, X_MAX, dtype=F64, **kw)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_()
    return enc


def reference(enc: torch.nn.Module, x: np.ndarray, order: int) -> np.ndarray:
    """``posenc.spline.interpolate_reference`` for the encoding's tables."""
    tables = {k: getattr(enc, k).detach().numpy() if hasattr(enc, k) else None for k in ("slopes", "curvatures")}
    return interpolate_reference(x, enc.values.detach().numpy(), tables["slopes"], enc.x_min, enc.x_max, order,
                                 curvatures=tables["curvatures"], form=enc.form)


def one_sided(enc: torch.nn.Module, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The order-k derivative at each interior centre c_i from its left interval (t = 1 of interval
    i - 1) and its right one (t = 0 of interval i), exactly: the module's own stacked table, row
    offsets and coefficients, without locating any x. Returns two ``[n_bin - 2, dim]`` arrays."""
    table = enc.stacked_table().detach().numpy()
    c = derivative_coeffs(enc._coeffs[0], order) / enc.delta**order  # [B, P]
    offsets = np.asarray(enc.row_offsets())
    i = np.arange(1, enc.n_bin - 1)
    left = np.einsum("b,ibd->id", c.sum(1), table[(i - 1)[:, None] + offsets])
    right = np.einsum("b,ibd->id", c[:, 0], table[i[:, None] + offsets])
    return left, right


def max_jumps(enc: torch.nn.Module) -> list[float]:
    """Largest jump of h, h' and h'' over the interior centres, relative to that derivative's scale."""
    out = []
    for k in range(3):
        left, right = one_sided(enc, k)
        out.append(float(np.abs(left - right).max() / max(1.0, np.abs(right).max())))
    return out


# --- the bases ------------------------------------------------------------------------------

def test_quintic_basis_matches_values_slopes_and_curvatures_at_both_ends():
    for k in range(3):
        d = derivative_coeffs(QUINTIC_HERMITE_POWER_COEFFS, k)
        np.testing.assert_array_equal(d[:, 0], np.eye(6)[2 * k])  # t = 0 selects row 2k (left centre)
        np.testing.assert_allclose(d.sum(1), np.eye(6)[2 * k + 1], atol=1e-14)  # t = 1 selects row 2k + 1


def test_bspline_basis_and_interpolation_matrix():
    np.testing.assert_allclose(BSPLINE_POWER_COEFFS.sum(0), [1.0, 0.0, 0.0, 0.0], atol=1e-15)  # partition of unity
    v = np.random.default_rng(0).standard_normal((N_BIN, DIM))
    x = np.linspace(X_MIN, X_MAX, N_BIN)
    control = bspline_interpolation_matrix(N_BIN) @ v
    np.testing.assert_allclose(interpolate_reference(x, control, None, X_MIN, X_MAX, form="bspline"), v, atol=1e-13)
    ends = interpolate_reference(x[[0, -1]], control, None, X_MIN, X_MAX, 2, form="bspline")
    np.testing.assert_allclose(ends, 0.0, atol=1e-12)  # the natural end condition of the ghost rows
    np.testing.assert_array_equal(bspline_interpolation_matrix(2), np.eye(2))


# --- centres and the numpy reference --------------------------------------------------------

def test_quintic_is_exact_at_the_centres():
    enc = random_encoding("QuinticHermiteEncoding")
    for k, table in enumerate([enc.values, enc.slopes, enc.curvatures]):
        torch.testing.assert_close(enc(enc.centres, order=k), table, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls_name", C2)
def test_every_order_matches_the_numpy_reference(cls_name):
    enc = random_encoding(cls_name)
    x = np.concatenate([np.linspace(X_MIN, X_MAX, N_BIN), np.random.default_rng(1).uniform(X_MIN, X_MAX, 100)])
    for order in range(7):
        got = enc(torch.as_tensor(x), order=order).detach().numpy()
        np.testing.assert_allclose(got, reference(enc, x, order), rtol=0, atol=1e-9 * max(1.0, np.abs(got).max()))


def test_initialisations_match_the_sinusoidal_table():
    values, slopes = sinusoidal_tables(N_BIN, DIM, X_MIN, X_MAX)
    curvatures = initial_curvatures("sinusoidal", N_BIN, DIM, X_MIN, X_MAX)
    q = pt.QuinticHermiteEncoding(N_BIN, DIM, X_MIN, X_MAX, dtype=F64)
    for got, want in zip([q.values, q.slopes, q.curvatures], [values, slopes, curvatures]):
        np.testing.assert_array_equal(got.detach().numpy(), want)
    b = pt.BSplineEncoding(N_BIN, DIM, X_MIN, X_MAX, dtype=F64)
    np.testing.assert_allclose(b(b.centres).detach().numpy(), values, atol=1e-13)  # the curve, not the controls
    assert not np.allclose(b.values.detach().numpy(), values)
    torch.manual_seed(0)
    normal = pt.BSplineEncoding(N_BIN, DIM, X_MIN, X_MAX, init="normal", dtype=F64)
    torch.manual_seed(0)
    assert torch.equal(normal.values, torch.randn(N_BIN, DIM, dtype=F64))  # i.i.d. control values
    zeros = pt.QuinticHermiteEncoding(N_BIN, DIM, X_MIN, X_MAX, init="normal")
    assert not zeros.slopes.any() and not zeros.curvatures.any()


# --- derivatives by autograd, to third order ------------------------------------------------

def interior_points(n: int, seed: int) -> torch.Tensor:
    """Points at 0.1..0.9 of random intervals: finite differences never straddle a centre."""
    gen = torch.Generator().manual_seed(seed)
    delta = (X_MAX - X_MIN) / (N_BIN - 1)
    i = torch.randint(0, N_BIN - 1, (n,), generator=gen)
    return X_MIN + delta * (i + 0.1 + 0.8 * torch.rand(n, generator=gen, dtype=F64))


@pytest.mark.parametrize("cls_name", C2)
@pytest.mark.parametrize("order", [0, 1])
def test_gradcheck_and_gradgradcheck(cls_name, order):
    enc = random_encoding(cls_name)
    names = [n for n, _ in enc.named_parameters()]
    tables = tuple(p.detach().clone().requires_grad_() for p in enc.parameters())
    x = interior_points(6, seed=order).requires_grad_()

    def f(x: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(enc, dict(zip(names, tables)), (x,), {"order": order})

    assert torch.autograd.gradcheck(f, (x, *tables))
    assert torch.autograd.gradgradcheck(f, (x, *tables))


@pytest.mark.parametrize("cls_name", C2)
def test_third_derivative_by_nested_autograd(cls_name):
    enc = random_encoding(cls_name)
    x = interior_points(8, seed=3).requires_grad_()
    weights = torch.randn(DIM, dtype=F64)
    (g1,) = torch.autograd.grad((enc(x) @ weights).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sum(), x, retain_graph=True)
    torch.testing.assert_close(g3, enc(x.detach(), order=3) @ weights, rtol=1e-10, atol=1e-9)
    eps = 1e-5  # central differences of the (autograd) second derivative
    xd = x.detach()
    fd = [(torch.autograd.grad(torch.autograd.grad((enc(z.requires_grad_()) @ weights).sum(), z, create_graph=True)[0]
                               .sum(), z)[0]) for z in (xd + eps, xd - eps)]
    torch.testing.assert_close(g3, (fd[0] - fd[1]) / (2 * eps), rtol=1e-5, atol=1e-5 * float(g3.abs().max()))
    # the tables' gradient of a force-like quantity (d/dx inside the loss), to second order
    (gt,) = torch.autograd.grad(g2.pow(2).sum(), enc.values, create_graph=True)
    (gx,) = torch.autograd.grad(gt.pow(2).sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().max() > 0


# --- continuity at every centre -------------------------------------------------------------

@pytest.mark.parametrize("cls_name", C2)
@pytest.mark.parametrize("init", ["sinusoidal", "random"])
def test_c2_forms_are_continuous_to_the_second_derivative(cls_name, init):
    enc = random_encoding(cls_name) if init == "random" else getattr(pt, cls_name)(N_BIN, DIM, X_MIN, X_MAX, dtype=F64)
    jumps = max_jumps(enc)
    print(f"{cls_name} {init}: max jumps of h, h', h'' over the centres {jumps}")
    assert max(jumps) < 1e-8
    if init == "random":  # C2, not C3: on rough tables the test can see the third derivative jump
        third_left, third_right = one_sided(enc, 3)
        assert np.abs(third_left - third_right).max() > 1e-3


def test_hermite_second_derivative_jumps():
    for enc in (random_encoding("HermiteEncoding"), pt.HermiteEncoding(N_BIN, DIM, X_MIN, X_MAX, dtype=F64)):
        jumps = max_jumps(enc)
        print(f"hermite: max jumps of h, h', h'' over the centres {jumps}")
        assert max(jumps[:2]) < 1e-8 and jumps[2] > 1e-4


def test_extrapolation_continuity_at_the_ends():
    eps = 1e-7
    b = random_encoding("BSplineEncoding", out_of_range="extrapolate")
    q = random_encoding("QuinticHermiteEncoding", out_of_range="extrapolate")
    for end, step in ((X_MIN, -eps), (X_MAX, eps)):
        at, out = torch.tensor([end], dtype=F64), torch.tensor([end + step], dtype=F64)
        for enc in (b, q):
            torch.testing.assert_close(enc(out), enc(at) + step * enc(at, order=1), rtol=0, atol=1e-12)
            torch.testing.assert_close(enc(out, order=1), enc(at, order=1), rtol=0, atol=1e-12)
        # the B-spline's h'' is 0 at the ends, so the linear extension keeps it C2
        assert float(b(at, order=2).detach().abs().max()) < 1e-10 and not b(out, order=2).any()
        assert float(q(at, order=2).detach().abs().max()) > 1e-3  # the quintic's h'' jumps to 0: C1 there


# --- range policies and bad input -----------------------------------------------------------

@pytest.mark.parametrize("cls_name", C2)
def test_range_policies_and_bad_input(cls_name):
    x = torch.tensor([X_MIN - 1.0, 2.0, X_MAX + 0.5], dtype=F64)
    with pytest.raises(ValueError, match="outside the encoding range"):
        random_encoding(cls_name)(x)
    with pytest.raises(ValueError, match="NaN"):
        random_encoding(cls_name)(torch.tensor([1.0, float("nan")], dtype=F64))
    with pytest.raises(ValueError, match="order must be >= 0"):
        random_encoding(cls_name)(x[1:2], order=-1)
    clamp = random_encoding(cls_name, out_of_range="clamp")
    ends = torch.tensor([X_MIN, 2.0, X_MAX], dtype=F64)
    torch.testing.assert_close(clamp(x), clamp(ends), rtol=0, atol=0)
    assert not clamp(x, order=1)[[0, 2]].any()
    extra = random_encoding(cls_name, out_of_range="extrapolate")
    want = extra(ends) + (x - ends)[:, None] * extra(ends, order=1)
    torch.testing.assert_close(extra(x), want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="out_of_range"):
        getattr(pt, cls_name)(N_BIN, DIM, X_MIN, X_MAX, out_of_range="wrap")


# --- Haiku -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name", C2)
@pytest.mark.parametrize("policy", ["error", "clamp", "extrapolate"])
def test_torch_and_haiku_agree(x64, cls_name, policy):
    enc = random_encoding(cls_name, out_of_range=policy)
    params = torch_to_haiku(enc, HAIKU_NAME[cls_name])
    f = hk.without_apply_rng(hk.transform(
        lambda x, order: getattr(ph, cls_name)(N_BIN, DIM, X_MIN, X_MAX, out_of_range=policy)(x, order)))
    assert set(f.init(None, jnp.full(1, X_MIN), 0)[HAIKU_NAME[cls_name]]) == set(params[HAIKU_NAME[cls_name]])
    xs = [np.random.default_rng(1).uniform(X_MIN, X_MAX, 200), np.linspace(X_MIN, X_MAX, N_BIN)]
    if policy != "error":
        xs.append(np.array([-1.0, 0.2, 4.3, 7.0]))
    for x in xs:
        for order in range(4):
            got = np.asarray(f.apply(params, jnp.asarray(x), order))
            want = enc(torch.as_tensor(x), order=order).detach().numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max()))
    back = haiku_to_torch(params, getattr(pt, cls_name)(N_BIN, DIM, X_MIN, X_MAX, dtype=F64), HAIKU_NAME[cls_name])
    for (name, p), q in zip(enc.named_parameters(), back.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("cls_name", C2)
def test_haiku_initialisation_equals_torch(x64, cls_name):
    f = hk.without_apply_rng(hk.transform(lambda x: getattr(ph, cls_name)(N_BIN, DIM, X_MIN, X_MAX)(x)))
    params = f.init(None, jnp.full(1, X_MIN))
    want = torch_to_haiku(getattr(pt, cls_name)(N_BIN, DIM, X_MIN, X_MAX, dtype=F64), HAIKU_NAME[cls_name])
    for name, table in want[HAIKU_NAME[cls_name]].items():
        np.testing.assert_array_equal(np.asarray(params[HAIKU_NAME[cls_name]][name]), table)
    assert float(ph.total_smoothness_loss(params)) == pytest.approx(float(ph.smoothness_loss(
        params[HAIKU_NAME[cls_name]]["values"])))


# --- smoothness loss, interpret, registry, training ------------------------------------------

@pytest.mark.parametrize("name", ["bspline", "hermite5"])
def test_registries_loss_and_interpret(name):
    enc = pt.make_encoding(name, **distance_encoding_kwargs(name, 5.0), dtype=F64)
    assert ph.ENCODINGS[name].__name__ == type(enc).__name__
    assert (enc.n_bin, enc.dim, enc.out_of_range) == (64, 32, "extrapolate")
    model = torch.nn.ModuleList([enc, pt.LinearEncoding(4, 2, 0.0, 1.0, dtype=F64)])
    total = pt.total_smoothness_loss(model)
    assert total.item() == pytest.approx(pt.smoothness_loss(enc.values).item() + pt.smoothness_loss(
        model[1].values).item())
    x = np.linspace(0.0, 5.0, 50)
    (tables, _) = tables_from_torch(model)
    assert tables.form == enc.form
    np.testing.assert_allclose(sample(tables, x, order=1)[0], enc(torch.as_tensor(x), order=1).detach().numpy(),
                               atol=1e-10)
    entry = torch_to_haiku(enc, "e")["e"]
    from_haiku = tables_from_haiku(entry, 0.0, 5.0, form=enc.form)[0]
    np.testing.assert_allclose(sample(from_haiku, x)[0], enc(torch.as_tensor(x)).detach().numpy(), atol=1e-10)
    with pytest.raises(ValueError, match="a hermite5 table has"):
        tables_from_haiku({"values": entry["values"]}, 0.0, 5.0, form="hermite5")


@pytest.mark.parametrize("name", ["bspline", "hermite5"])
def test_training_config_and_model_builders(name):
    assert name in TABLE_ENCODINGS
    config = resolve(TrainConfig(dataset="synthetic:md17", encoding=name, n_bin=16, dim=8, freeze_tables=True))
    overrides = encoding_overrides(config)
    assert (overrides["n_bin"], overrides["dim"]) == (16, 8)
    resolve(TrainConfig(dataset="synthetic:md17", encoding=name, table_lr_scale=0.5))
    with pytest.raises(ValueError, match="need a table encoding"):
        resolve(TrainConfig(dataset="synthetic:md17", encoding="gaussian", freeze_tables=True))
    cls = pt.ENCODINGS[name]
    for backbone in ("egnn", "transformer"):
        model = make_model(backbone, encoding=name, encoding_kwargs=overrides, x_max=5.0, n_layers=1, hidden=8)
        assert any(isinstance(m, cls) for m in model.modules()), backbone
    dimenet = DimeNetPlusPlus(hidden_channels=8, out_channels=1, num_blocks=1, radial_encoding=name,
                              angular_encoding="hermite")
    assert any(isinstance(m, cls) for m in dimenet.modules())


@pytest.mark.parametrize("name", ["bspline", "hermite5"])
@pytest.mark.parametrize("backend", ["torch", "haiku"])
def test_cli_quick_run(tmp_path, capsys, name, backend):
    out = tmp_path / f"{backend}_{name}"
    args = ["train", "--quick", "--dataset", "synthetic:md17", "--encoding", name, "--backend", backend,
            "--epochs", "2", "--n-train", "20", "--n-test", "10", "--progress", "false", "--out-dir", str(out)]
    assert main(args) == 0
    assert "test force MAE" in capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["config"]["encoding"] == name


@pytest.mark.parametrize("backend", ["torch", "haiku"])
def test_a_quintic_run_saves_and_reads_back_every_table(tmp_path, backend):
    """encoding_tables.npz of a hermite5 run holds curvatures and its form, and posenc.interpret
    reads the learned, initial and changed tables back with them; frozen tables never move."""
    from posenc.interpret import load_tables
    from posenc.trainer import train
    from posenc.training import TrainConfig

    base = dict(dataset="synthetic:md17", encoding="hermite5", n_layers=1, hidden=8, epochs=2, n_train=16,
                n_val=8, n_test=8, batch_size=8, encoding_kwargs={"n_bin": 8, "dim": 4}, backend=backend,
                progress=False)
    train(TrainConfig(out_dir=str(tmp_path / "run"), **base))
    learned, initial = (load_tables(tmp_path / "run" / "encoding_tables.npz", part) for part in ("learned", "initial"))
    change = load_tables(tmp_path / "run" / "encoding_tables.npz", "change")
    assert learned[0].form == "hermite5" and learned[0].curvatures.shape == (8, 4)
    np.testing.assert_allclose(change[0].curvatures, learned[0].curvatures - initial[0].curvatures)
    assert np.abs(change[0].curvatures).max() > 0
    train(TrainConfig(out_dir=str(tmp_path / "frozen"), freeze_tables=True, **base))
    frozen = load_tables(tmp_path / "frozen" / "encoding_tables.npz", "change")[0]
    assert all(np.abs(t).max() == 0 for t in (frozen.values, frozen.slopes, frozen.curvatures))
