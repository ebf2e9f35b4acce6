"""
Spatially varying kernels (``kernel_degree``): residuals near stars and timings.

Simulates a field whose kernel width changes linearly across the image
(``make_image_pair(kernel_sigma=(left, right))``), fits it with
``kernel_degree`` 0, 1 and 2 (and ``constant_scale=True``), and reports the
RMS of the normalised difference ``D / sigma`` on the pixels near bright
stars (1 for a perfect fit: the noise expectation), and everywhere. Then
fits a field with a constant kernel with d = 0 and d > 0 and compares P
and the size of the fitted variation with their errors. For comparison it
also fits the varying field tile by tile (``--tiles``: one constant kernel
per tile of an n x n grid, no interpolation between tiles; P in the table
is then the range over the tiles).

Run from the root of the source tree::

    python benchmarks/validate_spatial.py --size 1000

Timings are wall-clock on the current machine; compare them only within
one run.
"""

import argparse
import time

import numpy as np

from astro_dia import DifferenceImager
from astro_dia.simulate import make_image_pair


def near_star_mask(truth, shape, *, min_flux, radius):
    """Pixels within ``radius`` of a star brighter than ``min_flux``."""
    ny, nx = shape
    mask = np.zeros(shape, bool)
    y, x = np.mgrid[0:ny, 0:nx]
    stars = truth.stars[np.asarray(truth.stars["flux"]) > min_flux]
    for xs, ys in zip(np.asarray(stars["x"]), np.asarray(stars["y"])):
        x0, x1 = int(max(0, xs - radius)), int(min(nx, xs + radius + 1))
        y0, y1 = int(max(0, ys - radius)), int(min(ny, ys + radius + 1))
        sub = (x[y0:y1, x0:x1] - xs) ** 2 + (y[y0:y1, x0:x1] - ys) ** 2 <= radius ** 2
        mask[y0:y1, x0:x1] |= sub
    return mask


def normalised_difference(result):
    """``D / sigma`` and the mask of fitted pixels of a result."""
    return result.difference.data / result.difference.uncertainty.array, result.fit_mask


def rms_normalised(fitted, region):
    """RMS of D / sigma on the fitted pixels inside ``region``; ``fitted`` = (z, fit_mask)."""
    z, fit_mask = fitted
    use = fit_mask & region & np.isfinite(z)
    return float(np.sqrt(np.mean(z[use] ** 2))), int(use.sum())


def fit_tiles(reference, target, n_tiles, settings):
    """
    The tile alternative: one constant kernel per tile of an ``n x n`` grid.

    Each tile is fitted on its own cut-out, extended by half a kernel so that
    its valid region covers the tile; the tiles' ``D / sigma`` are put side
    by side (no interpolation between tiles).

    Returns
    -------
    (z, fit_mask) : the stitched D / sigma and fitted-pixel mask
    scale_factors : list of float, P of each tile
    """
    ny, nx = target.shape
    h = settings["kernel_size"] // 2
    z = np.full((ny, nx), np.nan)
    fit_mask = np.zeros((ny, nx), bool)
    scale_factors = []
    imager = DifferenceImager(**settings)
    for rows in np.array_split(np.arange(ny), n_tiles):
        for cols in np.array_split(np.arange(nx), n_tiles):
            y0, y1 = max(rows[0] - h, 0), min(rows[-1] + 1 + h, ny)
            x0, x1 = max(cols[0] - h, 0), min(cols[-1] + 1 + h, nx)
            cut = (slice(y0, y1), slice(x0, x1))
            result = imager.fit(reference[cut], target[cut])
            tile_z, tile_mask = normalised_difference(result)
            core = (slice(rows[0] - y0, rows[-1] + 1 - y0),
                    slice(cols[0] - x0, cols[-1] + 1 - x0))
            z[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = tile_z[core]
            fit_mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = tile_mask[core]
            scale_factors.append(result.scale_factor)
    return (z, fit_mask), scale_factors


def variation_chi2(result):
    """
    chi^2 per degree of freedom of the kernel's spatial variation against zero.

    The kernels of the non-constant terms with their covariance block: close
    to 1 when the fitted variation is consistent with none.
    """
    pixels = result.kernel.size
    n = len(result.kernel_terms) * pixels
    theta = result.kernel_terms[1:].reshape(-1)
    block = result.covariance[pixels:n, pixels:n]
    return float(theta @ np.linalg.solve(block, theta)) / theta.size


def run(args):
    shape = (args.size, args.size)
    settings = dict(kernel_size=args.kernel_size, solver=args.solver, dtype=args.dtype,
                    flat=1, sky=0)
    print(f"# {args.size} x {args.size}, kernel {args.kernel_size}, solver {args.solver}, "
          f"{args.dtype}; kernel sigma {args.left} -> {args.right} across x")
    reference, target, truth = make_image_pair(
        shape=shape, psf_sigma=args.psf_sigma, kernel_sigma=(args.left, args.right),
        density=args.density, seed=args.seed)
    near = near_star_mask(truth, shape, min_flux=args.min_flux, radius=args.radius)
    thirds = np.array_split(np.arange(args.size), 3)
    print("varying PSF field")
    print(f"{'fit':>22} {'rms near stars':>15} {'left':>7} {'middle':>7} {'right':>7} "
          f"{'rms all':>8} {'P(centre)':>11} {'time (s)':>9}")
    fits = [(degree, constant) for degree, constant in
            ((0, False), (1, False), (1, True), (2, False), (2, True))]
    fits += [("tiles", n) for n in args.tiles]
    for degree, option in fits:
        start = time.perf_counter()
        if degree == "tiles":
            fitted, tile_p = fit_tiles(reference, target, option, settings)
            label = f"{option} x {option} tiles, d=0"
            p_text = f"{min(tile_p):.3f}-{max(tile_p):.3f}"
        else:
            imager = DifferenceImager(kernel_degree=degree, constant_scale=option, **settings)
            result = imager.fit(reference, target)
            fitted = normalised_difference(result)
            label = f"d={degree}" + (" constant P" if option else "")
            p_text = f"{result.scale_factor:.5f}"
        elapsed = time.perf_counter() - start
        rms_near, n_near = rms_normalised(fitted, near)
        columns = []
        for part in thirds:
            region = np.zeros(shape, bool)
            region[:, part] = True
            columns.append(rms_normalised(fitted, near & region)[0])
        rms_all, _ = rms_normalised(fitted, np.ones(shape, bool))
        print(f"{label:>22} {rms_near:15.3f} {columns[0]:7.3f} {columns[1]:7.3f} "
              f"{columns[2]:7.3f} {rms_all:8.3f} {p_text:>11} {elapsed:9.1f}")
    print(f"(near-star pixels: {n_near}, within {args.radius} px of stars above "
          f"{args.min_flux:g} adu)")

    print("constant PSF field")
    reference, target, truth = make_image_pair(
        shape=shape, psf_sigma=args.psf_sigma, kernel_sigma=0.5 * (args.left + args.right),
        density=args.density, seed=args.seed + 1)
    base = DifferenceImager(kernel_degree=0, **settings).fit(reference, target)
    print(f"d=0: P = {base.scale_factor:.5f} +- {base.scale_factor_error:.5f}")
    ny, nx = shape
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], float)
    for degree in (1, 2):
        result = DifferenceImager(kernel_degree=degree, **settings).fit(reference, target)
        p_corners = result.scale_factor_at(corners[:, 0], corners[:, 1])
        e_corners = result.scale_factor_error_at(corners[:, 0], corners[:, 1])
        pulls = (p_corners - base.scale_factor) / e_corners
        print(f"d={degree}: P(centre) = {result.scale_factor:.5f} +- "
              f"{result.scale_factor_error:.5f}, (P - P_d0) / sigma_P = "
              f"{(result.scale_factor - base.scale_factor) / base.scale_factor_error:+.2f}; "
              f"at the corners (P - P_d0) / sigma = {np.array2string(pulls, precision=2)}; "
              f"variation chi2 / dof = {variation_chi2(result):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--kernel-size", type=int, default=15)
    parser.add_argument("--psf-sigma", type=float, default=1.5)
    parser.add_argument("--left", type=float, default=0.8, help="kernel sigma at x = 0")
    parser.add_argument("--right", type=float, default=2.2, help="kernel sigma at the right")
    parser.add_argument("--density", type=float, default=30.0)
    parser.add_argument("--min-flux", type=float, default=5000.0)
    parser.add_argument("--radius", type=float, default=6.0)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tiles", type=int, nargs="*", default=[3, 5],
                        help="also fit n x n tiles with one kernel each (the alternative "
                             "to a varying kernel), for each n given")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
