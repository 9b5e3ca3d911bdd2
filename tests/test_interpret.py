"""posenc.interpret: each metric against a direct computation, sampling across backends, input checks."""

import itertools
import os

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from posenc import interpret as I
from posenc.torch import HermiteEncoding, LinearEncoding, MLPEncoding, smoothness_loss

RNG = np.random.default_rng(0)
X = np.linspace(0.5, 5.0, 41)


def _random_emb(layers=2, points=41, dim=5, seed=0):
    return np.random.default_rng(seed).normal(size=(layers, points, dim))


# --- the metrics, against loops over scipy's correlations ---------------------------------------


def test_non_linearity_and_monotonicity_match_scipy_loops():
    emb = _random_emb()
    want_p = 1 - np.mean([pearsonr(emb[i, :, j], X)[0] ** 2 for i in range(2) for j in range(5)])
    want_s = 1 - np.mean([spearmanr(emb[i, :, j], X)[0] ** 2 for i in range(2) for j in range(5)])
    assert I.non_linearity(emb, X) == pytest.approx(want_p, abs=1e-12)
    assert I.non_monotonicity(emb, X) == pytest.approx(want_s, abs=1e-12)


def test_spearman_with_ties_matches_scipy():
    emb = np.round(_random_emb(1, 41, 3), 0)  # many ties
    want = 1 - np.mean([spearmanr(emb[0, :, j], X)[0] ** 2 for j in range(3)])
    assert I.non_monotonicity(emb, X) == pytest.approx(want, abs=1e-12)


def test_diversity_and_similarity_match_scipy_loops():
    a, b = _random_emb(seed=1), _random_emb(seed=2)
    pairs = [pearsonr(a[i, :, j], a[i, :, k])[0] ** 2 for i in range(2) for j, k in itertools.combinations(range(5), 2)]
    assert I.diversity(a) == pytest.approx(1 - np.mean(pairs), abs=1e-12)
    cross = [pearsonr(a[i, :, j], b[i, :, k])[0] ** 2 for i in range(2) for j in range(5) for k in range(5)]
    assert I.similarity(a, b) == pytest.approx(np.mean(cross), abs=1e-12)
    assert I.similarity(a, b) == pytest.approx(I.similarity(b, a), abs=1e-12)


def test_hand_made_embeddings_hit_the_ends_of_the_scales():
    xh = (X - X.min()) / np.ptp(X)
    linear = np.stack([2 * X + 1, -3 * X, X - 7], -1)
    monotone = np.stack([np.exp(X), -np.log(X), X**3], -1)
    bumps = np.stack([np.sin(2 * np.pi * xh), np.cos(2 * np.pi * xh)], -1)
    assert I.non_linearity(linear, X) == pytest.approx(0.0, abs=1e-12)
    assert I.non_monotonicity(monotone, X) == pytest.approx(0.0, abs=1e-12)
    assert I.non_linearity(monotone, X) > 0.01
    assert I.diversity(linear) == pytest.approx(0.0, abs=1e-12)  # identical dims up to affine maps
    # one full sine / cosine period each: far from monotone
    assert I.non_monotonicity(bumps, X) > 0.5


def test_similarity_bounds():
    a, b = _random_emb(seed=3), _random_emb(seed=4)
    aa, bb, ab = I.similarity(a, a), I.similarity(b, b), I.similarity(a, b)
    assert ab <= np.sqrt(aa * bb) + 1e-12  # Cauchy-Schwarz on the projectors
    same = np.repeat(a[..., :1], 5, axis=-1)  # all dims alike -> self-similarity 1
    assert I.similarity(same, same) == pytest.approx(1.0)


def test_self_similarity_is_the_row_maximum_for_tasks_of_equal_diversity():
    # Three tasks built from orthonormal-ish feature families of the same richness: each task's
    # row peaks on itself. (Not a theorem in general: see the similarity docstring and the next test.)
    xh = (X - X.min()) / np.ptp(X)
    fams = [np.stack([np.sin((k + 1) * np.pi * xh + p) for k in range(3)], -1) for p in (0.0, 0.7, 2.0)]
    mat = np.array([[I.similarity(a, b) for b in fams] for a in fams])
    assert np.all(np.argmax(mat, axis=1) == np.arange(3))


def test_self_similarity_can_be_beaten_by_a_less_diverse_task():
    # Documented caveat: a = (f1, f1, f2), b = (f1, f1, f1) gives sim(a, b) = 2/3 > sim(a, a) = 5/9.
    xh = (X - X.min()) / np.ptp(X)
    f1, f2 = np.sin(2 * np.pi * xh), np.cos(2 * np.pi * xh)
    f2 = f2 - (f2 @ (f1 - f1.mean())) / ((f1 - f1.mean()) @ (f1 - f1.mean())) * (f1 - f1.mean())  # uncorrelate
    a, b = np.stack([f1, f1, f2], -1), np.stack([f1, f1, f1], -1)
    assert I.similarity(a, a) == pytest.approx(5 / 9, abs=1e-9)
    assert I.similarity(a, b) == pytest.approx(2 / 3, abs=1e-9)


def test_smoothness_matches_the_torch_loss_and_constant_table_gives_one():
    v = RNG.normal(size=(16, 4))
    assert I.smoothness_loss(v) == pytest.approx(float(smoothness_loss(torch.tensor(v))), rel=1e-12)
    assert I.smoothness(v) == pytest.approx(1 - float(smoothness_loss(torch.tensor(v))), rel=1e-12)
    assert I.smoothness(np.full((16, 4), 0.3)) == 1.0
    two = np.stack([v, np.full((16, 4), 2.0)])
    assert I.smoothness(two) == pytest.approx(1 - 0.5 * I.smoothness_loss(v))  # mean over layers
    with pytest.raises(ValueError, match="all-zero"):
        I.smoothness(np.zeros((8, 3)))


def test_polynomial_baseline_reproduces_table3_column():
    # Coarse [0, 1] grids are what the paper used: .08 / .00 / .09 to its rounding.
    x = np.linspace(0.0, 1.0, 32)
    p = I.polynomial_embedding(x)
    assert p.shape == (1, 32, 3)
    np.testing.assert_allclose(p[0], np.stack([x, x**2, x**3], -1))
    assert round(I.non_linearity(p, x), 2) == 0.08
    assert round(I.non_monotonicity(p, x), 2) == 0.0
    assert round(I.diversity(p), 2) == 0.09
    np.testing.assert_allclose(I.polynomial_embedding(3 * x + 2), p)  # normalised to x̂


# --- ĝ, centroid, PCA -------------------------------------------------------------------------


def test_normalised_derivative_definition():
    g = _random_emb(2, 41, 6, seed=5)
    ghat = I.normalised_derivative(g)
    assert ghat.shape == (2, 41)
    for i in range(2):
        want = np.array([np.sqrt(np.mean(g[i, p] ** 2)) for p in range(41)]) / np.std(g[i].ravel())
        np.testing.assert_allclose(ghat[i], want, rtol=1e-12)
    np.testing.assert_allclose(I.normalised_derivative(7.0 * g), ghat)  # free of units of h and x
    with pytest.raises(ValueError, match="constant"):
        I.normalised_derivative(np.zeros((41, 3)))


def test_derivative_centroid_flat_and_concentrated():
    flat = np.ones_like(X)
    assert I.derivative_centroid(X, flat) == pytest.approx(0.5)
    short = np.exp(-((X - X.min()) / 0.3))
    assert I.derivative_centroid(X, short) < 0.1
    assert I.derivative_centroid(X, np.stack([flat, short])).shape == (2,)


def test_bin_mean_derivative_is_the_bin_average_of_g():
    enc = _hermite()
    x_mid, g_bar = I.bin_mean_derivative([enc, enc])
    assert g_bar.shape == (2, 11, 4)
    centres = np.linspace(0.5, 5.0, 12)
    np.testing.assert_allclose(x_mid, 0.5 * (centres[1:] + centres[:-1]))
    # Gauss-Legendre (exact for the quadratic g of a cubic) average of the sampled g on each bin
    nodes, weights = np.polynomial.legendre.leggauss(3)
    for i in range(11):
        xs = x_mid[i] + 0.5 * (centres[1] - centres[0]) * nodes
        avg = 0.5 * weights @ I.sample(enc, xs, order=1)[0]
        np.testing.assert_allclose(g_bar[0, i], avg, atol=1e-10)
    with pytest.raises(ValueError, match="different grids"):
        I.bin_mean_derivative([enc, I.Tables(np.ones((8, 4)), None, 0.5, 5.0)])


def test_pca_2d_recovers_a_planar_curve():
    t = np.linspace(0, np.pi, 50)
    plane = np.stack([3 * np.cos(t), np.sin(t)], -1)  # [50, 2]
    rot = np.linalg.qr(RNG.normal(size=(6, 6)))[0][:2]  # embed the plane in 6-D
    coords, explained = I.pca_2d(plane @ rot + 4.0)
    assert explained.sum() == pytest.approx(1.0)
    assert explained[0] > explained[1]
    # distances between points are kept by an orthogonal projection onto the curve's plane
    d = lambda c: np.linalg.norm(c[:, None] - c[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(coords), d(plane), atol=1e-9)
    # deterministic signs: each component's largest-magnitude coordinate is positive
    assert np.all(coords[np.abs(coords).argmax(0), [0, 1]] > 0)


# --- sampling ---------------------------------------------------------------------------------


def _hermite(seed=0, **kw):
    torch.manual_seed(seed)
    enc = HermiteEncoding(12, 4, 0.5, 5.0, init="normal", dtype=torch.float64, **kw)
    with torch.no_grad():
        enc.slopes.normal_()
    return enc


@pytest.mark.parametrize("order", [0, 1])
def test_sampling_torch_equals_sampling_its_tables_and_haiku_params(order):
    enc = _hermite()
    v, s = enc.values.detach().numpy(), enc.slopes.detach().numpy()
    got = I.sample(enc, X, order=order)
    assert got.shape == (1, 41, 4)
    np.testing.assert_allclose(got, I.sample(I.Tables(v, s, 0.5, 5.0), X, order=order), atol=1e-12)
    np.testing.assert_allclose(got, I.sample((v, s, 0.5, 5.0), X, order=order), atol=1e-12)
    haiku = I.tables_from_haiku({"hermite_encoding": {"values": v, "slopes": s}}, 0.5, 5.0)
    np.testing.assert_allclose(got, I.sample(haiku, X, order=order), atol=1e-12)
    np.testing.assert_allclose(got, I.sample({"values": v, "slopes": s, "x_min": 0.5, "x_max": 5.0}, X, order),
                               atol=1e-12)


def test_sampling_several_layers_and_a_model():
    a, b = _hermite(0), _hermite(1)
    two = I.sample([a, b], X)
    assert two.shape == (2, 41, 4)
    np.testing.assert_allclose(I.sample([a, b], X[3:4]), two[:, 3:4], atol=1e-12)  # one point is a grid too
    model = torch.nn.Sequential(a, torch.nn.Identity(), b)  # no .dim: read through its tables
    np.testing.assert_allclose(I.sample(model, X), two, atol=1e-12)
    lin = LinearEncoding(12, 4, 0.5, 5.0, dtype=torch.float64)
    np.testing.assert_allclose(I.sample(lin, X), I.sample(I.tables_from_torch(lin), X), atol=1e-12)


def test_sampling_derivative_of_a_non_table_encoding_by_autodiff():
    torch.manual_seed(0)
    mlp = MLPEncoding(dim=3, hidden=8).double()
    eps = 1e-6
    fd = (I.sample(mlp, X + eps) - I.sample(mlp, X - eps)) / (2 * eps)
    np.testing.assert_allclose(I.sample(mlp, X, order=1), fd, atol=1e-6)
    with pytest.raises(ValueError, match="no table encoding"):
        I.as_tables(mlp)
    with pytest.raises(TypeError, match="cannot read tables"):
        I.as_tables(np.ones((12, 3)))


def test_load_tables_roundtrip_and_errors(tmp_path):
    enc = _hermite()
    v, s = enc.values.detach().numpy(), enc.slopes.detach().numpy()
    good = tmp_path / "U0" / "encoding_tables.npz"
    good.parent.mkdir()
    np.savez(good, values_layer0=v, slopes_layer0=s, values_layer1=2 * v, slopes_layer1=s, x_min=0.5, x_max=5.0)
    tabs = I.load_tables(good)
    assert len(tabs) == 2
    np.testing.assert_allclose(I.sample(tabs[0], X), I.sample(enc, X), atol=1e-12)
    assert list(I.load_results(str(tmp_path / "*" / "encoding_tables.npz"))) == ["U0"]
    assert I.load_results(str(tmp_path / "nothing" / "*.npz")) == {}
    bad = tmp_path / "bad.npz"
    np.savez(bad, values_layer0=v, values_layer2=v, x_min=0.5, x_max=5.0)
    with pytest.raises(ValueError, match="contiguous"):
        I.load_tables(bad)
    np.savez(bad, values_layer0=v, x_min=0.5)
    with pytest.raises(ValueError, match="x_max"):
        I.load_tables(bad)


def _save_run(path, layers, initial=None, x_min=0.5, x_max=5.0):
    """An encoding_tables.npz as the training code writes it (``initial`` adds the init_* arrays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x_min": x_min, "x_max": x_max}
    for prefix, tables in (("", layers), ("init_", initial or [])):
        for i, (v, s) in enumerate(tables):
            arrays[f"{prefix}values_layer{i}"] = v
            if s is not None:
                arrays[f"{prefix}slopes_layer{i}"] = s
    np.savez(path, **arrays)


def _learned_and_initial(seed=0, n_bin=12, dim=4, layers=2):
    from posenc.init import initial_tables

    rng = np.random.default_rng(seed)
    init = [initial_tables("sinusoidal", n_bin, dim, 0.5, 5.0) for _ in range(layers)]
    learned = [(v + 0.1 * rng.normal(size=v.shape), s + 0.3 * rng.normal(size=s.shape)) for v, s in init]
    return learned, init


def test_load_tables_parts_change_samples_to_learned_minus_initial(tmp_path):
    learned, init = _learned_and_initial()
    path = tmp_path / "run" / "encoding_tables.npz"
    _save_run(path, learned, init)
    got = {part: I.load_tables(path, part=part) for part in I.PARTS}
    for i in range(2):
        np.testing.assert_array_equal(got["learned"][i].values, learned[i][0])
        np.testing.assert_array_equal(got["initial"][i].slopes, init[i][1])
        np.testing.assert_allclose(got["change"][i].values, learned[i][0] - init[i][0], atol=1e-15)
        np.testing.assert_allclose(got["change"][i].slopes, learned[i][1] - init[i][1], atol=1e-15)
        assert (got["change"][i].x_min, got["change"][i].x_max) == (0.5, 5.0)
    # The encoding is linear in its tables: sampling the change is h(x) - h0(x), also between the
    # centres and for the derivative, where the slopes enter.
    for order in (0, 1):
        want = I.sample(got["learned"], X, order) - I.sample(got["initial"], X, order)
        np.testing.assert_allclose(I.sample(got["change"], X, order), want, atol=1e-10)
        assert np.abs(want).max() > 0.05  # the test would see a wrong sign or a swapped part
    # the default is unchanged: the learned tables, as before
    default = I.load_tables(path)
    for a, b in zip(default, got["learned"]):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.slopes, b.slopes)
    assert len(I.load_tables(path, part="initial")) == 2


def test_load_tables_change_of_a_linear_layer_has_no_slopes(tmp_path):
    learned, init = _learned_and_initial(layers=1)
    path = tmp_path / "lin.npz"
    _save_run(path, [(learned[0][0], None)], [(init[0][0], None)])
    (change,) = I.load_tables(path, part="change")
    assert change.slopes is None
    np.testing.assert_allclose(change.values, learned[0][0] - init[0][0])


def test_load_tables_initial_or_change_of_an_old_file_raise_naming_it(tmp_path):
    learned, init = _learned_and_initial()
    old = tmp_path / "old" / "encoding_tables.npz"
    _save_run(old, learned)  # a run saved before the init_* arrays were recorded
    assert len(I.load_tables(old)) == 2  # the learned tables still load
    for part in ("initial", "change"):
        with pytest.raises(ValueError, match=rf"{old}.*init_values_layer"):
            I.load_tables(old, part=part)
        with pytest.raises(ValueError, match=str(old)):
            I.load_results(str(tmp_path / "*" / "encoding_tables.npz"), part=part)
    with pytest.raises(ValueError, match="part must be one of"):
        I.load_tables(old, part="delta")
    partial = tmp_path / "partial.npz"
    _save_run(partial, learned, [init[0]])  # the second layer's start is missing
    with pytest.raises(ValueError, match="values_layer1 has no 'init_values_layer1'"):
        I.load_tables(partial, part="change")
    short = tmp_path / "short.npz"
    _save_run(short, learned, [(v[:-1], s[:-1]) for v, s in init])
    with pytest.raises(ValueError, match="shape"):
        I.load_tables(short, part="initial")


def test_load_results_keys_parts_and_duplicates(tmp_path):
    runs = {}
    for k, target in enumerate(["homo", "U0"]):
        learned, init = _learned_and_initial(seed=k)
        _save_run(tmp_path / "runs" / f"qm9-{target}" / "egnn" / "smooth" / "seed1" / "encoding_tables.npz",
                  learned, init)
        runs[target] = (learned, init)
    pattern = str(tmp_path / "runs" / "qm9-*" / "egnn" / "smooth" / "seed1" / "encoding_tables.npz")
    with pytest.raises(ValueError, match="both have the key 'seed1'"):
        I.load_results(pattern)  # the default key (the directory's name) cannot tell them apart
    key = lambda p: p.split(os.sep)[-5].removeprefix("qm9-")  # noqa: E731
    change = I.load_results(pattern, part="change", key=key)
    assert list(change) == ["U0", "homo"]  # sorted paths
    for target, (learned, init) in runs.items():
        np.testing.assert_allclose(change[target][1].values, learned[1][0] - init[1][0])
    learned = I.load_results(pattern, key=key)
    np.testing.assert_array_equal(learned["homo"][0].values, runs["homo"][0][0][0])


def test_metrics_table_and_similarity_matrix():
    encs = {"a": _hermite(0), "b": _hermite(1)}
    table = I.metrics_table(encs, n_points=101)
    assert list(table) == ["a", "b", "polynomial"]
    assert set(table["a"]) == set(I.METRICS)
    x = np.linspace(0.5, 5.0, 101)
    emb = I.sample(encs["a"], x)
    assert table["a"]["diversity"] == pytest.approx(I.diversity(emb))
    assert table["a"]["smoothness"] == pytest.approx(1 - float(smoothness_loss(encs["a"].values.detach())))
    assert table["polynomial"]["non_monotonicity"] == pytest.approx(0.0, abs=1e-12)
    names, mat = I.similarity_matrix(encs, n_points=101)
    assert names == ["a", "b"]
    assert mat[0, 1] == pytest.approx(I.similarity(emb, I.sample(encs["b"], x)))
    np.testing.assert_allclose(mat, mat.T)


# --- input validation -------------------------------------------------------------------------


def test_input_validation():
    emb = _random_emb(1, 41, 3)
    with pytest.raises(ValueError, match="grids do not match"):
        I.non_linearity(emb, X[:-1])
    with pytest.raises(ValueError, match="NaN"):
        I.non_linearity(np.where(emb > 2, np.nan, emb), X)
    with pytest.raises(ValueError, match="NaN"):
        I.non_linearity(emb, np.where(X > 4, np.nan, X))
    with pytest.raises(ValueError, match="must be"):
        I.diversity(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="layer 0 dim 1"):
        I.non_linearity(np.stack([X, np.full_like(X, 3.0), X**2], -1), X)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        I.diversity(emb[..., :1])
    with pytest.raises(ValueError, match="same grid"):
        I.similarity(emb, emb[:, :-1])
    with pytest.raises(ValueError, match="outside"):
        I.sample(_hermite(), np.linspace(0.0, 5.0, 10))
    with pytest.raises(ValueError, match="different dims"):
        I.sample([_hermite(), I.Tables(np.ones((12, 2)), None, 0.5, 5.0)], X)
    with pytest.raises(ValueError, match="slopes shape"):
        I.sample(I.Tables(np.ones((12, 2)), np.ones((12, 3)), 0.5, 5.0), X)
    with pytest.raises(ValueError, match="different ranges"):
        I.metrics_table({"a": I.Tables(RNG.normal(size=(8, 3)), None, 0.0, 1.0),
                         "b": I.Tables(RNG.normal(size=(8, 3)), None, 0.0, 2.0)})
    with pytest.raises(ValueError, match="one layer"):
        I.pca_2d(_random_emb(2, 41, 3))
