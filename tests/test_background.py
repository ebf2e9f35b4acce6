"""Tests of astro_dia.background: polynomial differential backgrounds (eq. 18-19)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from astro_dia.background import background_basis, evaluate_background, polynomial_terms


def normalised_coordinates(shape):
    """eta = (x - xc) / Nx, xi = (y - yc) / Ny with the centre of the full image."""
    ny, nx = shape
    y, x = np.indices(shape, dtype=float)
    return (x - (nx - 1) / 2) / nx, (y - (ny - 1) / 2) / ny


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 5, np.int64(4)])
def test_polynomial_terms_count_and_content(degree):
    terms = polynomial_terms(degree)
    d = int(degree)
    assert len(terms) == (d + 1) * (d + 2) // 2
    assert len(set(terms)) == len(terms)
    assert terms[0] == (0, 0)
    assert all(m >= 0 and n >= 0 and m + n <= d for m, n in terms)
    assert set(terms) == {(m, n) for m in range(d + 1) for n in range(d + 1) if m + n <= d}


def test_polynomial_terms_order():
    assert polynomial_terms(1) == [(0, 0), (0, 1), (1, 0)]


@pytest.mark.parametrize("degree", [-1, 1.0, 1.5, True, "2", None])
def test_polynomial_terms_bad_degree(degree):
    with pytest.raises(ValueError, match="background_degree must be a non-negative integer"):
        polynomial_terms(degree)


def test_background_basis_normalised_coordinates_at_the_corners():
    shape = (4, 6)
    basis = background_basis(shape, 1)
    assert basis.shape == (3, 4, 6)
    assert_allclose(basis[0], 1.0, rtol=0, atol=0)
    xi, eta = basis[1], basis[2]  # terms (0, 1) -> xi, (1, 0) -> eta
    # corners: x in {0, 5} -> eta = (x - 2.5) / 6; y in {0, 3} -> xi = (y - 1.5) / 4
    for (y, x), (eta_c, xi_c) in {(0, 0): (-5 / 12, -3 / 8), (0, 5): (5 / 12, -3 / 8),
                                  (3, 0): (-5 / 12, 3 / 8), (3, 5): (5 / 12, 3 / 8)}.items():
        assert eta[y, x] == pytest.approx(eta_c, rel=1e-15)
        assert xi[y, x] == pytest.approx(xi_c, rel=1e-15)


@pytest.mark.parametrize("shape", [(5, 7), (6, 6), (1, 9)])
def test_background_basis_follows_polynomial_terms(shape):
    eta, xi = normalised_coordinates(shape)
    basis = background_basis(shape, 3)
    for image, (m, n) in zip(basis, polynomial_terms(3)):
        assert_allclose(image, eta ** m * xi ** n, rtol=1e-14, atol=1e-16)


def test_background_basis_degree_zero():
    basis = background_basis((3, 4), 0)
    assert basis.shape == (1, 3, 4)
    assert_allclose(basis, 1.0, rtol=0, atol=0)


def test_background_basis_region_uses_full_image_centre():
    shape, region = (10, 12), (slice(2, 7), slice(3, 11))
    full = background_basis(shape, 2)
    part = background_basis(shape, 2, region=region)
    assert part.shape == (6, 5, 8)
    assert_allclose(part, full[(slice(None),) + region], rtol=0, atol=0)


def test_evaluate_background_degree_one_is_the_plane():
    shape = (9, 14)
    c0, c_xi, c_eta = 50.0, -3.0, 7.5
    eta, xi = normalised_coordinates(shape)
    expected = c0 + c_xi * xi + c_eta * eta
    assert_allclose(evaluate_background([c0, c_xi, c_eta], shape), expected, rtol=1e-14)
    # the plane is centred: its mean is the constant term
    assert evaluate_background([c0, c_xi, c_eta], shape).mean() == pytest.approx(c0, rel=1e-14)


def test_evaluate_background_degree_two():
    shape = (8, 5)
    coefficients = [1.0, 2.0, -1.0, 0.5, 4.0, -2.0]  # (0,0) (0,1) (0,2) (1,0) (1,1) (2,0)
    eta, xi = normalised_coordinates(shape)
    expected = (1.0 + 2.0 * xi - 1.0 * xi ** 2 + 0.5 * eta + 4.0 * eta * xi - 2.0 * eta ** 2)
    assert_allclose(evaluate_background(coefficients, shape), expected, rtol=1e-13)


def test_evaluate_background_constant():
    assert_allclose(evaluate_background([5.0], (2, 3)), np.full((2, 3), 5.0), rtol=0, atol=0)
    assert_allclose(evaluate_background(np.array([-1.5]), (4, 4)), -1.5, rtol=0, atol=0)


def test_evaluate_background_region():
    shape, region = (12, 9), (slice(1, 5), slice(2, 9))
    coefficients = [3.0, 1.0, -2.0]
    full = evaluate_background(coefficients, shape)
    part = evaluate_background(coefficients, shape, region=region)
    assert_allclose(part, full[region], rtol=0, atol=0)


@pytest.mark.parametrize("n_coefficients", [2, 4, 5, 7, 9])
def test_evaluate_background_wrong_number_of_coefficients(n_coefficients):
    with pytest.raises(ValueError, match=f"{n_coefficients} coefficients do not make a full "
                                         "2-D polynomial"):
        evaluate_background(np.ones(n_coefficients), (4, 4))


def test_evaluate_background_without_coefficients():
    with pytest.raises(ValueError, match="0 coefficients"):
        evaluate_background([], (4, 4))
