"""
Synthetic reference/target pairs with known kernel, scale factor and background.

`make_image_pair` draws a star field in the manner of paper section 3.1
(the 'S10' set of Bramich et al. 2016): Gaussian PSFs, a power-law flux
distribution, a reference with ten times less variance than the target,
CCD (or EMCCD) noise, and the detector settings in the FITS headers, as a
real reduced frame would have them. Options add what real frames have:
sky subtraction, a reference as noisy as the target, saturated stars, bad
columns, cosmic rays and a variable star. `make_bias_test` makes the four
noiseless pairs of section 3.4, whose exact kernel is known.
`make_variable_series` observes one field at many epochs with variable
stars, for light curves.

This module owns the reference/target pairs and their truth
(`SimulationTruth`); star fields and their rendering live in
`astro_dia.simulate._star_field`, the time series in `astro_dia.simulate._series`.
All the public names are importable from here.
"""

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import QTable

from ._injection import expected_snr, inject_point_sources
from ._series import VariableSeriesTruth, make_variable_series
from ._star_field import make_star_field, render_stars
from ..kernels import check_kernel_size, delta_kernel, gaussian_kernel

__all__ = ["inject_point_sources", "expected_snr", "SimulationTruth", "make_star_field", "make_image_pair", "make_bias_test",
           "draw_s10_parameters", "VariableSeriesTruth", "make_variable_series"]


@dataclass
class SimulationTruth:
    """
    What a simulated pair was made from.

    Attributes
    ----------
    scale_factor : float
        True photometric scale factor P.
    background : float
        True differential background B0 (target unit).
    kernel : ndarray or None
        The exact kernel when one exists (`make_bias_test`), else a
        pixel-integrated Gaussian approximating it.
    reference_noiseless, target_noiseless : ndarray
        The images before noise (and before sky subtraction, saturation or
        bad pixels).
    target_variance, reference_variance : ndarray
        The variance each noise realisation was drawn with.
    stars : `~astropy.table.QTable`
        Star positions (0-based pixel ``x``, ``y`` in the reference) and
        reference fluxes.
    settings : dict
        The scalar settings of the simulation.
    """

    scale_factor: float
    background: float
    kernel: object
    reference_noiseless: np.ndarray
    target_noiseless: np.ndarray
    target_variance: np.ndarray
    reference_variance: np.ndarray
    stars: QTable
    settings: dict = field(default_factory=dict)


def make_image_pair(shape=(142, 142), *, psf_sigma=1.5, kernel_sigma=1.5, scale_factor=1.0,
                    reference_sky=100.0, target_sky=300.0, shift=(0.0, 0.0), density=30.0,
                    gain=1.0, read_noise=5.0, reference_variance_ratio=0.1, noise=True,
                    noise_model="ccd", em_gain=300.0, excess_noise_factor=2.0, unit="adu",
                    sky_subtracted=False, record_sky=True, saturation=None, bad_columns=(),
                    n_cosmic_rays=0, variable_flux=0.0, with_uncertainty=True, seed=None,
                    noise_seed=None):
    """
    Simulate a reference and target CCDData pair of one star field.

    The target is the reference star field seen through a PSF widened by a
    Gaussian kernel (:math:`\\phi_I^2 = \\phi_R^2 + \\phi_K^2`, eq. 24),
    scaled by ``scale_factor``, shifted and on another sky level.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)``.
    psf_sigma : float, optional
        Reference PSF standard deviation :math:`\\phi_R` (pixels).
    kernel_sigma : float or (float, float), optional
        Kernel standard deviation :math:`\\phi_K` (pixels); a pair
        ``(left, right)`` makes it vary linearly with ``x``, from the first
        value at the left edge (``x = -0.5``) to the second at the right
        edge, as across a wide field (``truth.kernel`` is then the kernel
        at the image centre).
    scale_factor : float, optional
        Photometric scale factor P of the target relative to the reference.
    reference_sky, target_sky : float, optional
        Sky levels (adu); the true B0 is ``target_sky - P * reference_sky``.
    shift : tuple of float, optional
        Sub-pixel shift ``(dy, dx)`` of the target's stars.
    density : float, optional
        Stars per 100 x 100 pixels.
    gain : float, optional
        Gain in e-/adu, written to the GAIN keyword.
    read_noise : float, optional
        Read noise in adu; the RDNOISE keyword holds it in electrons.
    reference_variance_ratio : float, optional
        Reference variance over that of a single exposure: 0.1 for the S10
        set, 1 for a single-epoch reference as noisy as the target. For data
        in adu the reference header's GAIN and RDNOISE describe this stacked
        noise; for data in electrons no header can (the CCD model then has
        unit gain), so use the reference's ``uncertainty``, which is always
        the true one.
    noise : bool, optional
        Add noise; False gives noiseless images (with uncertainties).
    noise_model : {'ccd', 'emccd'}, optional
        Noise of the target: eq. 6, or eq. 7 with ``em_gain`` and
        ``excess_noise_factor`` (EMGAIN keyword written).
    unit : {'adu', 'electron'}, optional
        Unit of the returned data.
    sky_subtracted : bool, optional
        Subtract each image's sky, as survey pipelines do; with
        ``record_sky`` the level goes in the SKYLEVEL keyword.
    saturation : float, optional
        Clip both images at this level (adu) and write SATURATE.
    bad_columns : sequence of int, optional
        Target columns set to NaN (not masked), as a dead column reads out.
    n_cosmic_rays : int, optional
        Single-pixel hits added to the target.
    variable_flux : float, optional
        Flux change (adu, reference scale) of the brightest star in the
        target.
    with_uncertainty : bool, optional
        Attach the true standard deviation as a StdDevUncertainty.
    seed : int or `numpy.random.Generator`, optional
        Seed of the star field (and of the noise when ``noise_seed`` is None).
    noise_seed : int or `numpy.random.Generator`, optional
        Separate seed of the noise and cosmic rays: the same ``seed`` with
        different ``noise_seed`` gives the same field re-noised. None
        (default) draws the noise from ``seed`` after the field.

    Returns
    -------
    reference, target : `~astropy.nddata.CCDData`
    truth : `SimulationTruth`
        ``truth.background`` is the B0 of the returned images (zero when
        they are sky-subtracted).

    Examples
    --------
    >>> reference, target, truth = make_image_pair(shape=(64, 64), seed=0)
    >>> target.shape, target.unit, target.header["GAIN"]
    ((64, 64), Unit("adu"), 1.0)
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    unit = u.Unit(unit)
    if unit not in (u.adu, u.electron):
        raise ValueError(f"unit must be 'adu' or 'electron', got {unit}")
    if noise_model not in ("ccd", "emccd"):
        raise ValueError(f"noise_model must be 'ccd' or 'emccd', got {noise_model!r}")
    stars = make_star_field(shape, density=density, seed=rng)
    kernel_sigma_setting = (tuple(float(v) for v in kernel_sigma) if np.ndim(kernel_sigma)
                            else float(kernel_sigma))
    if np.ndim(kernel_sigma):
        left, right = kernel_sigma_setting
        fraction = (np.asarray(stars["x"], float) + 0.5) / shape[1]
        star_kernel_sigma = left + (right - left) * fraction
        kernel_sigma = 0.5 * (left + right)
    else:
        star_kernel_sigma = kernel_sigma = float(kernel_sigma)
    star_target_sigma = np.hypot(psf_sigma, star_kernel_sigma)
    target_sigma = float(np.hypot(psf_sigma, kernel_sigma))
    dy, dx = shift
    reference_stars = render_stars(shape, stars, psf_sigma)
    target_stars = render_stars(shape, stars, star_target_sigma, dx=dx, dy=dy,
                           flux_scale=scale_factor)
    if variable_flux:
        brightest = int(np.argmax(stars["flux"]))
        one = QTable({"x": [stars["x"][brightest]], "y": [stars["y"][brightest]],
                      "flux": [variable_flux]})
        target_stars = target_stars + render_stars(
            shape, one, np.broadcast_to(star_target_sigma, len(stars))[brightest:brightest + 1],
            dx=dx, dy=dy, flux_scale=scale_factor)
    reference_clean = reference_stars + reference_sky
    target_clean = target_stars + target_sky

    if noise_model == "ccd":
        photon_slope = 1.0 / gain
    else:
        photon_slope = excess_noise_factor * em_gain / gain
    target_var = read_noise ** 2 + photon_slope * target_clean
    reference_var = reference_variance_ratio * (read_noise ** 2 + photon_slope * reference_clean)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    if noise:
        target = target_clean + rng.standard_normal(shape) * np.sqrt(target_var)
        reference = reference_clean + rng.standard_normal(shape) * np.sqrt(reference_var)
    else:
        target, reference = target_clean.copy(), reference_clean.copy()
    if n_cosmic_rays:
        iy = rng.integers(0, shape[0], n_cosmic_rays)
        ix = rng.integers(0, shape[1], n_cosmic_rays)
        target[iy, ix] += rng.uniform(500, 5000, n_cosmic_rays) * np.sqrt(target_var[iy, ix])

    headers = []
    for ratio, sky in ((reference_variance_ratio, reference_sky), (1.0, target_sky)):
        header = fits.Header()
        header["GAIN"] = (gain / ratio, "e-/adu (effective, for a stack)")
        if noise_model == "ccd":
            header["RDNOISE"] = (float(np.sqrt(ratio) * read_noise * gain / ratio),
                                 "read noise (e-)")
        else:
            header["EMGAIN"] = (em_gain, "electron-multiplying gain")
        if sky_subtracted and record_sky:
            header["SKYLEVEL"] = (sky, "sky level subtracted (adu)")
        if saturation is not None:
            header["SATURATE"] = (saturation, "saturation level (adu)")
        headers.append(header)
    if sky_subtracted:
        reference = reference - reference_sky
        target = target - target_sky
    if saturation is not None:
        reference = np.minimum(reference, saturation)
        target = np.minimum(target, saturation)
    target[:, list(bad_columns)] = np.nan

    factor = gain if unit == u.electron else 1.0
    images = []
    for data, variance, header in ((reference, reference_var, headers[0]),
                                   (target, target_var, headers[1])):
        if unit == u.electron:
            if "SKYLEVEL" in header:
                header["SKYLEVEL"] = (header["SKYLEVEL"] * factor, "sky level subtracted (e-)")
            if "SATURATE" in header:
                header["SATURATE"] = (header["SATURATE"] * factor, "saturation level (e-)")
        uncertainty = StdDevUncertainty(np.sqrt(variance) * factor) if with_uncertainty else None
        images.append(CCDData(data * factor, unit=unit, meta=header, uncertainty=uncertainty))

    truth = SimulationTruth(
        scale_factor=float(scale_factor),
        background=0.0 if sky_subtracted else float(
            (target_sky - scale_factor * reference_sky) * factor),
        kernel=scale_factor * gaussian_kernel(2 * int(np.ceil(4 * kernel_sigma)) + 1,
                                              kernel_sigma, center=(dy, dx)),
        reference_noiseless=reference_clean * factor, target_noiseless=target_clean * factor,
        target_variance=target_var * factor ** 2, reference_variance=reference_var * factor ** 2,
        stars=stars,
        settings=dict(psf_sigma=psf_sigma, kernel_sigma=kernel_sigma_setting,
                      target_psf_sigma=target_sigma,
                      gain=gain, read_noise=read_noise, noise_model=noise_model, unit=str(unit),
                      reference_variance_ratio=reference_variance_ratio))
    return images[0], images[1], truth


def make_bias_test(kind, *, shape=(142, 142), kernel_size=19, psf_sigma=1.5, background=100.0,
                   density=30.0, gain=1.0, read_noise=5.0, seed=None):
    """
    One of the four noiseless 'no algorithmic bias' pairs of paper section 3.4.

    The reference is a noiseless, sky-free star field; the target is an
    exact linear transformation of it plus a constant ``background``:

    - ``'identity'``: the reference itself;
    - ``'blur'``: convolved with a Gaussian kernel of sigma 1.5 pixels;
    - ``'shift'``: shifted by one pixel in +x and +y, without resampling;
    - ``'half_shift'``: shifted by half a pixel in +x and +y with cubic
      spline interpolation (`scipy.ndimage.shift`, no pre-filter).

    Both images carry the CCD uncertainty the noise would have had, so that
    ``noise_model='uncertainty'`` fits with realistic fixed weights.

    Parameters
    ----------
    kind : {'identity', 'blur', 'shift', 'half_shift'}
    shape : tuple of int, optional
    kernel_size : int, optional
        Size of the returned exact kernel.
    psf_sigma : float, optional
        Reference PSF sigma (pixels).
    background : float, optional
        B0 added to the target (adu).
    density : float, optional
        Stars per 100 x 100 pixels.
    gain, read_noise : float, optional
        For the uncertainties and headers (e-/adu, adu).
    seed : int or `numpy.random.Generator`, optional

    Returns
    -------
    reference, target : `~astropy.nddata.CCDData`
    truth : `SimulationTruth`
        With the exact ``kernel``, ``scale_factor`` (its sum) and
        ``background``.

    Examples
    --------
    >>> reference, target, truth = make_bias_test("shift", shape=(48, 48), kernel_size=5, seed=0)
    >>> float(truth.kernel[3, 3]), truth.scale_factor
    (1.0, 1.0)
    """
    from scipy import ndimage

    kernel_size = check_kernel_size(kernel_size)
    rng = np.random.default_rng(seed)
    stars = make_star_field(shape, density=density, seed=rng)
    reference = render_stars(shape, stars, psf_sigma)
    if kind == "identity":
        kernel = delta_kernel(kernel_size)
    elif kind == "blur":
        kernel = gaussian_kernel(kernel_size, 1.5)
    elif kind == "shift":
        kernel = delta_kernel(kernel_size, offset=(1, 1))
    elif kind == "half_shift":
        kernel = ndimage.shift(delta_kernel(kernel_size), (0.5, 0.5), order=3,
                               prefilter=False, mode="constant")
    else:
        raise ValueError(
            f"kind must be 'identity', 'blur', 'shift' or 'half_shift', got {kind!r}")
    # Exact discrete convolution (zero outside the image; only the valid
    # region is used by a fit).
    target = ndimage.convolve(reference, kernel, mode="constant", cval=0.0)
    target = target + background
    header = fits.Header({"GAIN": gain, "RDNOISE": read_noise * gain})
    images = []
    variances = []
    for data in (reference, target):
        variance = read_noise ** 2 + np.maximum(data, 0) / gain
        variances.append(variance)
        images.append(CCDData(data.copy(), unit="adu", meta=header.copy(),
                              uncertainty=StdDevUncertainty(np.sqrt(variance))))
    truth = SimulationTruth(scale_factor=float(kernel.sum()), background=float(background),
                            kernel=kernel, reference_noiseless=reference,
                            target_noiseless=target, target_variance=variances[1],
                            reference_variance=variances[0], stars=stars,
                            settings=dict(kind=kind, psf_sigma=psf_sigma))
    return images[0], images[1], truth


def draw_s10_parameters(rng):
    """
    Draw the random settings of one S10-like simulation (paper section 3.1).

    Parameters
    ----------
    rng : `numpy.random.Generator`

    Returns
    -------
    settings : dict
        Keyword arguments for `make_image_pair`.
    """
    return dict(psf_sigma=rng.uniform(0.5, 2.5), kernel_sigma=rng.uniform(0.5, 2.5),
                density=10 ** rng.uniform(0, 3), reference_sky=rng.uniform(10, 1000),
                target_sky=rng.uniform(10, 1000), shift=tuple(rng.uniform(-0.5, 0.5, 2)),
                gain=1.0, read_noise=5.0, reference_variance_ratio=0.1)
