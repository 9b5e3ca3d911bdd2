"""The self-checking exercises: right answers pass, typical wrong answers fail with the right message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posenc import exercises as ex
from posenc.interpret import smoothness_loss as numpy_smoothness_loss
from posenc.spline import interpolate_reference
from posenc.toys import LennardJones, Morse, cluster_energy_forces
from posenc.torch import HermiteEncoding, smoothness_loss

LJ = LennardJones()


def text(result: ex.CheckResult) -> str:
    """The report with its line wrapping undone."""
    return " ".join(str(result).split())


def assert_fails_with(result: ex.CheckResult, message: str) -> None:
    assert not result.passed, str(result)
    assert message in text(result), str(result)


# --- Hermite basis ---------------------------------------------------------------------------
def basis(t):
    return 2 * t**3 - 3 * t**2 + 1, -2 * t**3 + 3 * t**2, t**3 - 2 * t**2 + t, t**3 - t**2


def test_basis_right_answers_pass():
    for answer in (basis,
                   lambda t: np.stack(basis(t), axis=-1),  # [P, 4]
                   lambda t: torch.stack(basis(torch.as_tensor(t))),  # torch, [4, P]
                   lambda t: tuple(float(b) for b in basis(float(t)))):  # one number at a time
        result = ex.check_hermite_basis(answer)
        assert result.passed and bool(result), str(result)
        assert str(result).startswith("✔ Hermite basis: all 6 checks passed")


def test_basis_wrong_order_is_named():
    result = ex.check_hermite_basis(lambda t: (basis(t)[0], basis(t)[2], basis(t)[1], basis(t)[3]))
    assert_fails_with(result, "right four polynomials in the order (h00, h10, h01, h11)")


def test_basis_sign_and_typo_are_named():
    assert_fails_with(ex.check_hermite_basis(lambda t: (*basis(t)[:3], t**2 - t**3)), "your h11 has the wrong sign")
    typo = ex.check_hermite_basis(lambda t: (basis(t)[0], basis(t)[1], t**3 - 2 * t**2 - t, basis(t)[3]))
    assert_fails_with(typo, "your h10 is t³ - 2t² - t, expected t³ - 2t² + t")
    assert "h10'(0) = -1, should be 1" in text(typo)


def test_basis_not_cubic_wrong_end_value():
    result = ex.check_hermite_basis(lambda t: (basis(t)[0], np.sin(np.pi / 2 * t), *basis(t)[2:]))
    assert_fails_with(result, "not a cubic polynomial in t: h01")


def test_basis_wrong_shape_and_crash_fail_without_raising():
    assert_fails_with(ex.check_hermite_basis(lambda t: basis(t)[:3]), "returns shape (3, 10)")
    assert_fails_with(ex.check_hermite_basis(lambda t: 1 / 0), "ZeroDivisionError")
    assert_fails_with(ex.check_hermite_basis(lambda t: None), "returns None")


def test_misuse_raises():
    with pytest.raises(TypeError, match="callable"):
        ex.check_hermite_basis("2t^3 - 3t^2 + 1")
    with pytest.raises(ValueError, match="x_max must be > x_min"):
        ex.check_hermite_encoding(interpolate_reference, x_min=1.0, x_max=0.0)
    with pytest.raises(TypeError, match="PairPotential"):
        ex.check_pair_force(LJ.force, potential=3.0)
    with pytest.raises(ValueError, match="non-empty"):
        ex.check_pair_force(LJ.force, LJ, r=[])
    with pytest.raises(ValueError, match="n_atoms"):
        ex.check_cluster_forces(lambda p: p, LJ, n_atoms=1)


# --- interpolated tables ---------------------------------------------------------------------
def hermite(x, values, slopes, x_min, x_max, *, slope_scale=None, clip=True, swap=False):
    """A student's numpy Hermite encoding; the keywords put in one mistake each."""
    n = values.shape[0]
    delta = (x_max - x_min) / (n - 1)
    u = (x - x_min) / delta
    i = np.floor(u).astype(int)
    if clip:
        i = np.clip(i, 0, n - 2)
    t = (u - i)[:, None]
    h00, h01, h10, h11 = basis(t)
    s = delta if slope_scale is None else slope_scale
    g0, g1 = (slopes[i + 1], slopes[i]) if swap else (slopes[i], slopes[i + 1])
    return h00 * values[i] + h01 * values[i + 1] + s * (h10 * g0 + h11 * g1)


def torch_hermite(x, values, slopes, x_min, x_max):
    """The library's encoding in float32, as a student would call it."""
    enc = HermiteEncoding(values.shape[0], values.shape[1], x_min, x_max, dtype=torch.float32)
    with torch.no_grad():
        enc.values.copy_(torch.as_tensor(values))
        enc.slopes.copy_(torch.as_tensor(slopes))
    return enc(torch.as_tensor(x, dtype=torch.float32))


def test_variant_without_mistakes_is_the_reference():
    rng = np.random.default_rng(1)
    values, slopes = rng.standard_normal((7, 2)), rng.standard_normal((7, 2))
    x = np.concatenate([np.linspace(-1.0, 2.0, 7), rng.uniform(-1.0, 2.0, 50)])
    for s in (slopes, None):
        np.testing.assert_allclose(ex._variant(x, values, s, -1.0, 2.0), interpolate_reference(x, values, s, -1.0, 2.0))


def test_hermite_encoding_right_answers_pass():
    for answer in (hermite, interpolate_reference, torch_hermite):
        result = ex.check_hermite_encoding(answer)
        assert result.passed, str(result)
    assert "C1: dh/dx is continuous" in text(result)


def test_hermite_encoding_missing_delta_is_named():
    result = ex.check_hermite_encoding(lambda *a: hermite(*a, slope_scale=1.0))
    assert_fails_with(result, "off by a factor Δ: your slope terms are not multiplied by the bin width Δ = 0.5")
    assert "✔ C1" in text(result) and "✘ dh/dx(c_i) ≠ slopes[i]" in text(result)
    assert_fails_with(ex.check_hermite_encoding(lambda *a: hermite(*a, slope_scale=1 / 0.5)),
                      "divided by Δ = 0.5 instead of multiplied")


def test_hermite_encoding_not_c1_and_last_centre():
    swapped = ex.check_hermite_encoding(lambda *a: hermite(*a, swap=True))
    assert_fails_with(swapped, "not C1: dh/dx jumps at x = 1, 1.5, 2, 2.5")
    assert "h10 and h11 are swapped" in text(swapped)
    unclipped = ex.check_hermite_encoding(lambda *a: hermite(*a, clip=False))
    assert_fails_with(unclipped, "raises at x = 3 (IndexError")
    assert "clip the interval index to n_bin - 2" in text(unclipped)
    assert "✔ C1" in text(unclipped)  # the other points are still checked


def linear(x, values, x_min, x_max):
    return interpolate_reference(x, values, None, x_min, x_max)


def test_linear_interpolation():
    assert ex.check_linear_interpolation(linear).passed

    def one_point(x, values, x_min, x_max):  # scalar code, correct
        i = min(int((x - x_min) // 0.5), values.shape[0] - 2)
        t = (x - x_min) / 0.5 - i
        return (1 - t) * values[i] + t * values[i + 1]

    assert ex.check_linear_interpolation(one_point).passed

    def nearest(x, values, x_min, x_max):
        return values[np.round((x - x_min) / 0.5).astype(int)]

    assert_fails_with(ex.check_linear_interpolation(nearest), "the value of the nearest centre")

    def t_in_x_units(x, values, x_min, x_max):
        i = np.clip(np.floor((x - x_min) / 0.5).astype(int), 0, values.shape[0] - 2)
        t = (x - x_min - 0.5 * i)[:, None]
        return (1 - t) * values[i] + t * values[i + 1]

    result = ex.check_linear_interpolation(t_in_x_units)
    assert_fails_with(result, "yours is not divided by Δ = 0.5")
    assert "only the last centre" not in text(result)  # the named mistake explains it


# --- smoothness loss -------------------------------------------------------------------------
def test_smoothness_loss_right_answers_pass():
    answers = [
        numpy_smoothness_loss,
        lambda v: smoothness_loss(torch.as_tensor(v)),  # the library's loss
        lambda v: v.diff(dim=0).norm(dim=1).sum() / v[:-1].norm(dim=1).sum(),  # torch-only code
    ]
    for answer in answers:
        result = ex.check_smoothness_loss(answer)
        assert result.passed, str(result)


@pytest.mark.parametrize("answer, message", [
    (lambda v: np.linalg.norm(np.diff(v, axis=0), axis=1).sum(), "missing normalisation"),
    (lambda v: (np.diff(v, axis=0) ** 2).sum() / (v[:-1] ** 2).sum(), "you use squared norms"),
    (lambda v: np.linalg.norm(np.diff(v, axis=0), axis=1).sum() / np.linalg.norm(v, axis=1).sum(),
     "the denominator sums over all n rows"),
    (lambda v: np.abs(np.diff(v, axis=0)).sum() / np.abs(v[:-1]).sum(), "you use 1-norms"),
    (lambda v: np.linalg.norm(np.diff(v, axis=0)) / np.linalg.norm(v[:-1]), "one norm of the whole table"),
    (lambda v: np.linalg.norm(np.diff(v, axis=0), axis=1), "not one number (did you forget a sum?)"),
])
def test_smoothness_loss_mistakes(answer, message):
    assert_fails_with(ex.check_smoothness_loss(answer), message)


def test_missing_normalisation_is_not_scale_free():
    result = ex.check_smoothness_loss(lambda v: np.linalg.norm(np.diff(v, axis=0), axis=1).sum())
    assert "✘ not scale-free" in text(result) and "✔ zero for a constant table" in text(result)


# --- forces ----------------------------------------------------------------------------------
def morse_autograd_force(r):
    r = torch.as_tensor(r).requires_grad_(True)
    energy = (1 - torch.exp(-(r - 1))) ** 2 - 1  # Morse(d_e=1, a=1, r_e=1)
    return -torch.autograd.grad(energy.sum(), r)[0]


def test_pair_force_right_answers_pass():
    assert ex.check_pair_force(lambda r: 24 * (2 * r**-13 - r**-7), LJ).passed
    assert ex.check_pair_force(morse_autograd_force, Morse()).passed
    assert ex.check_pair_force(lambda r: float(LJ.force(r)), LJ, r=[1.0, 1.5]).passed  # one number at a time


@pytest.mark.parametrize("answer, message", [
    (lambda r: -24 * (2 * r**-13 - r**-7), "the sign is wrong"),
    (lambda r: 4 * (r**-12 - r**-6), "you return the energy E(r)"),
    (lambda r: 24 * (2 * r**-12 - r**-6), "extra factor r"),
    (lambda r: 24 * (2 * r**-14 - r**-8), "you return F/r"),
    (lambda r: 4 * (12 * r**-13 - 6 * r**-7) / 2, "0.5 times the right one"),
    (lambda r: -(LJ.energy(r + 1e-3) - LJ.energy(r - 1e-3)) / 2e-3, "a finite difference?"),
])
def test_pair_force_mistakes(answer, message):
    assert_fails_with(ex.check_pair_force(answer, LJ), message)


def pair_loop_forces(pos, *, both=True, unit=True, factor=1.0):
    """A student's double loop over pairs; the keywords put in one mistake each."""
    forces = np.zeros_like(pos)
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            d = pos[i] - pos[j]
            r = np.linalg.norm(d)
            f = factor * LJ.force(r) * (d / r if unit else d)
            forces[i] += f
            if both:
                forces[j] -= f
    return forces


def test_cluster_forces():
    assert ex.check_cluster_forces(pair_loop_forces, LJ).passed
    assert ex.check_cluster_forces(lambda pos: cluster_energy_forces(LJ, pos)[1], LJ, n_atoms=4, seed=3).passed
    one_sided = ex.check_cluster_forces(lambda p: pair_loop_forces(p, both=False), LJ)
    assert_fails_with(one_sided, "added to atom i only")
    assert "✘ the forces sum to" in text(one_sided)
    assert_fails_with(ex.check_cluster_forces(lambda p: pair_loop_forces(p, factor=2.0), LJ), "each pair counted twice")
    assert_fails_with(ex.check_cluster_forces(lambda p: pair_loop_forces(p, factor=-1.0), LJ), "the sign is wrong")
    assert_fails_with(ex.check_cluster_forces(lambda p: pair_loop_forces(p, unit=False), LJ), "not a unit vector")
    assert_fails_with(ex.check_cluster_forces(lambda p: p[:, :2], LJ), "returns shape (5, 2)")


def test_report_format():
    result = ex.CheckResult("Demo")
    assert not result.passed  # no checks: nothing was shown to be right
    result.add(True, "fine")
    result.add(False, "ok text", "what is wrong")
    result.hint("try this")
    assert str(result) == "✘ Demo: 1 of 2 checks failed\n  ✔ fine\n  ✘ what is wrong\n  → try this"
    assert repr(result) == str(result)


def test_report_wraps_long_lines():
    result = ex.CheckResult("Demo")
    result.add(False, "", "word " * 60)
    lines = str(result).splitlines()
    assert len(lines) > 2 and all(len(line) <= ex.REPORT_WIDTH for line in lines)
    assert lines[1].startswith("  ✘ word") and lines[2].startswith("    word")
