"""The numpy reference: basis polynomials, derivative coefficients, grid validation."""

import numpy as np
import pytest

from posenc.spline import (
    HERMITE_POWER_COEFFS,
    LINEAR_POWER_COEFFS,
    bin_centres,
    check_grid,
    derivative_coeffs,
    interpolate_reference,
)


def _eval(coeffs, t):
    return np.stack([t**p for p in range(coeffs.shape[1])], -1) @ coeffs.T


def test_hermite_basis_interpolates_values_and_slopes():
    # h00, h01 take values 1/0 and 0/1 at t = 0/1; h10, h11 carry the unit slopes there.
    b0, b1 = _eval(HERMITE_POWER_COEFFS, np.array([0.0, 1.0]))
    d = derivative_coeffs(HERMITE_POWER_COEFFS, 1)
    g0, g1 = _eval(d, np.array([0.0, 1.0]))
    np.testing.assert_allclose(b0, [1, 0, 0, 0])
    np.testing.assert_allclose(b1, [0, 1, 0, 0])
    np.testing.assert_allclose(g0, [0, 0, 1, 0])
    np.testing.assert_allclose(g1, [0, 0, 0, 1])


def test_derivative_coeffs_match_finite_differences():
    t = np.linspace(0.05, 0.95, 11)
    eps = 1e-6
    for coeffs in (HERMITE_POWER_COEFFS, LINEAR_POWER_COEFFS):
        for k in range(3):
            dk, dk1 = derivative_coeffs(coeffs, k), derivative_coeffs(coeffs, k + 1)
            fd = (_eval(dk, t + eps) - _eval(dk, t - eps)) / (2 * eps)
            np.testing.assert_allclose(_eval(dk1, t), fd, atol=1e-6)
    assert not derivative_coeffs(HERMITE_POWER_COEFFS, 4).any()
    with pytest.raises(ValueError, match="order"):
        derivative_coeffs(HERMITE_POWER_COEFFS, -1)


def test_reference_at_centres_and_between():
    rng = np.random.default_rng(0)
    v, s = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    c = bin_centres(7, -1.0, 2.0)
    np.testing.assert_allclose(interpolate_reference(c, v, s, -1.0, 2.0), v, atol=1e-12)
    np.testing.assert_allclose(interpolate_reference(c, v, s, -1.0, 2.0, order=1), s, atol=1e-12)
    # a cubic polynomial is reproduced exactly by the Hermite interpolant of its values and slopes
    f = lambda x: 0.3 * x**3 - x**2 + 2 * x - 1  # noqa: E731
    df = lambda x: 0.9 * x**2 - 2 * x + 2  # noqa: E731
    x = rng.uniform(-1, 2, 50)
    out = interpolate_reference(x, f(c)[:, None], df(c)[:, None], -1.0, 2.0)
    np.testing.assert_allclose(out[:, 0], f(x), atol=1e-12)
    # linear interpolation reproduces a line
    out = interpolate_reference(x, (2 * c + 1)[:, None], None, -1.0, 2.0)
    np.testing.assert_allclose(out[:, 0], 2 * x + 1, atol=1e-12)


@pytest.mark.parametrize(
    "args, err, match",
    [
        ((1, 0.0, 1.0), ValueError, "n_bin must be >= 2"),
        ((4.0, 0.0, 1.0), TypeError, "n_bin must be an int"),
        ((True, 0.0, 1.0), TypeError, "n_bin must be an int"),
        ((4, 1.0, 1.0), ValueError, "x_max must be > x_min"),
        ((4, 2.0, 1.0), ValueError, "x_max must be > x_min"),
        ((4, 0.0, float("inf")), ValueError, "finite"),
    ],
)
def test_check_grid_errors(args, err, match):
    with pytest.raises(err, match=match):
        check_grid(*args)


def test_reference_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside the encoding range"):
        interpolate_reference(np.array([1.5]), np.zeros((3, 1)), None, 0.0, 1.0)
