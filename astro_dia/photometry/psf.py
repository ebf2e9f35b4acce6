"""
PSF models for photometry on difference images.

The PSF of a difference image is that of the target, which the fit models
as the reference PSF convolved with the kernel, ``PSF_R (x) K``, divided by
``P = sum(K)`` so that it has unit flux (paper section 3.2). The functions
here make a reference PSF (a Gaussian or Moffat of known width, or an
effective PSF built from reference stars) and turn it into that target
PSF, a photutils `~photutils.psf.ImagePSF`.
"""

import warnings

import numpy as np
from astropy.nddata import NDData
from astropy.stats import sigma_clipped_stats
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning
from scipy.signal import fftconvolve

from ._positions import pixel_positions
from ..fitting._validation import positive_number

__all__ = ["gaussian_psf", "moffat_psf", "build_reference_psf", "render_psf", "target_psf"]

# Models whose value at a point is already the flux of a pixel centred there
# (pixel-response functions and effective PSFs); other models are integrated
# over the pixel when rendered.
_PIXEL_INTEGRATED = ("CircularGaussianPRF", "CircularGaussianSigmaPRF", "GaussianPRF",
                     "ImagePSF", "GriddedPSFModel")
_SUBSAMPLE = 5


def _odd_size(value, name, minimum=3):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an odd integer, got {value!r}")
    if value < minimum or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}, got {value}")
    return int(value)


def _oversampling(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"oversampling must be a positive integer, got {value!r}")
    return int(value)


def _check_psf_model(psf):
    from astropy.modeling import Model

    if not isinstance(psf, Model) or psf.n_inputs != 2 or psf.n_outputs != 1:
        raise TypeError(
            "the PSF must be a two-dimensional astropy/photutils model, such as the output "
            f"of gaussian_psf, moffat_psf or build_reference_psf; got {type(psf).__name__}")
    for name in ("x_0", "y_0", "flux"):
        if name not in psf.param_names:
            raise ValueError(
                f"the PSF model {type(psf).__name__} has no {name!r} parameter; wrap it with "
                "photutils.psf.make_psf_model")
    return psf


def gaussian_psf(fwhm):
    """
    A circular Gaussian reference PSF of known width.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum in pixels (``2.3548 * sigma``).

    Returns
    -------
    psf : `~photutils.psf.CircularGaussianPRF`
        A pixel-integrated Gaussian of unit flux centred at ``(0, 0)``.

    Examples
    --------
    >>> from astro_dia.photometry import gaussian_psf
    >>> psf = gaussian_psf(3.0)
    >>> print(f"{psf(0, 0):.4f}")  # flux of the central pixel
    0.0932
    """
    from photutils.psf import CircularGaussianPRF

    return CircularGaussianPRF(flux=1.0, x_0=0.0, y_0=0.0, fwhm=positive_number(fwhm, "fwhm"))


def moffat_psf(fwhm, beta=2.5):
    """
    A circular Moffat reference PSF of known width.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum in pixels.
    beta : float, optional
        Power-law index of the wings (> 1); 2.5 is typical of ground-based
        seeing.

    Returns
    -------
    psf : `~photutils.psf.MoffatPSF`
        A Moffat profile of unit flux centred at ``(0, 0)``, with
        ``alpha = fwhm / (2 sqrt(2**(1/beta) - 1))``. It is a point
        function; `render_psf` and `target_psf` integrate it over pixels.

    Examples
    --------
    >>> from astro_dia.photometry import moffat_psf
    >>> psf = moffat_psf(3.0, beta=3.0)
    >>> print(f"{psf.alpha.value:.3f}")
    2.942
    """
    from photutils.psf import MoffatPSF

    fwhm = positive_number(fwhm, "fwhm")
    beta = positive_number(beta, "beta")
    if beta <= 1:
        raise ValueError(f"beta must be greater than 1 (the Moffat flux diverges otherwise), "
                         f"got {beta}")
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return MoffatPSF(flux=1.0, x_0=0.0, y_0=0.0, alpha=alpha, beta=beta)


def render_psf(psf, size, *, oversampling=1):
    """
    Pixel-integrated image of a PSF model, centred on the middle sample.

    Parameters
    ----------
    psf : `astropy.modeling.Model`
        A photutils PSF model with ``x_0``, ``y_0`` and ``flux``
        parameters. Pixel-response models (``*PRF``) and
        `~photutils.psf.ImagePSF` are sampled as they are; other models
        (such as `~photutils.psf.MoffatPSF`) are averaged over
        5 x 5 points in each pixel.
    size : int
        Odd side of the image in pixels.
    oversampling : int, optional
        Samples per pixel along each axis.

    Returns
    -------
    image : (n, n) ndarray
        ``n = oversampling * (size - 1) + 1``; sample ``j`` is at offset
        ``(j - (n - 1) / 2) / oversampling`` pixels from the PSF centre and
        holds the flux a pixel centred there would receive from a source of
        unit flux. Not normalised (its sum is about ``oversampling**2``).

    Examples
    --------
    >>> from astro_dia.photometry import gaussian_psf, render_psf
    >>> image = render_psf(gaussian_psf(3.0), 15)
    >>> image.shape, f"{image.sum():.4f}"
    ((15, 15), '1.0000')
    """
    psf = _check_psf_model(psf).copy()
    size = _odd_size(size, "size")
    oversampling = _oversampling(oversampling)
    psf.x_0 = 0.0
    psf.y_0 = 0.0
    psf.flux = 1.0
    n = oversampling * (size - 1) + 1
    offsets = (np.arange(n) - (n - 1) / 2) / oversampling
    y, x = np.meshgrid(offsets, offsets, indexing="ij")
    name = type(psf).__name__
    if name in _PIXEL_INTEGRATED:
        return np.asarray(psf(x, y), dtype=float)
    sub = (np.arange(_SUBSAMPLE) - (_SUBSAMPLE - 1) / 2) / _SUBSAMPLE
    image = np.zeros((n, n))
    for dy in sub:
        for dx in sub:
            image += psf(x + dx, y + dy)
    return image / _SUBSAMPLE ** 2


def _natural_size(psf):
    """An odd stamp size (pixels) that holds the PSF's wings."""
    if type(psf).__name__ == "ImagePSF":
        oversampling = np.broadcast_to(np.atleast_1d(psf.oversampling), (2,))
        size = int(np.ceil(max(n / o for n, o in zip(psf.data.shape, oversampling))))
        return size + 1 - size % 2
    fwhm = getattr(psf, "fwhm", None)
    if fwhm is not None:
        fwhm = float(np.atleast_1d(getattr(fwhm, "value", fwhm))[0])
    else:
        image = render_psf(psf, 31)
        fwhm = 2.0 * np.sqrt((image >= image.max() / 2).sum() / np.pi)
    half = int(np.ceil(2.5 * fwhm))
    return 2 * max(half, 2) + 1


def target_psf(reference_psf, kernel, size=None, *, oversampling=4):
    """
    The PSF of the difference image: the reference PSF convolved with the kernel.

    The reference PSF is rendered (pixel-integrated) on a grid of
    ``oversampling`` samples per pixel, convolved with the kernel placed on
    every ``oversampling``-th sample (the kernel acts on whole pixels), and
    normalised to unit flux: ``PSF_R (x) K / sum(K)`` (paper section 3.2).

    Parameters
    ----------
    reference_psf : `astropy.modeling.Model`
        The reference PSF: `gaussian_psf`, `moffat_psf`,
        `build_reference_psf`, or any photutils PSF model with ``x_0``,
        ``y_0`` and ``flux`` parameters.
    kernel : (K, K) array_like or None
        The fitted convolution kernel (``result.kernel``);
        None renders the reference PSF alone.
    size : int, optional
        Odd side of the target PSF in pixels; by default the reference
        PSF's own extent (2.5 FWHM each side, or an ``ImagePSF``'s shape)
        plus the kernel's.
    oversampling : int, optional
        Samples per pixel of the returned model; 4 (default) makes the
        spline interpolation of `~photutils.psf.ImagePSF` accurate for
        PSFs as sharp as 1 pixel FWHM.

    Returns
    -------
    psf : `~photutils.psf.ImagePSF`
        Unit-flux model, centred at ``(0, 0)``; its data sum to
        ``oversampling**2`` (photutils' convention for oversampled PSFs).

    Raises
    ------
    ValueError
        If the kernel is not a finite, odd, square 2-D array with a
        non-zero sum.

    Examples
    --------
    A kernel that shifts by one pixel in ``x`` and ``y`` and scales by
    0.9 moves the peak of the normalised PSF to ``(1, 1)``:

    >>> import numpy as np
    >>> from astro_dia.photometry import gaussian_psf, target_psf
    >>> kernel = np.zeros((5, 5)); kernel[3, 3] = 0.9
    >>> psf = target_psf(gaussian_psf(3.0), kernel)
    >>> print(f"{psf(1, 1):.4f} {gaussian_psf(3.0)(0, 0):.4f}")
    0.0932 0.0932
    """
    from photutils.psf import ImagePSF

    reference_psf = _check_psf_model(reference_psf)
    oversampling = _oversampling(oversampling)
    if kernel is not None:
        kernel = np.array(kernel, dtype=float)
        if (kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0
                or not np.isfinite(kernel).all()):
            raise ValueError(f"kernel must be a finite, odd, square 2-D array, got shape "
                             f"{kernel.shape}")
        if kernel.sum() == 0:
            raise ValueError("kernel sums to zero, so the target PSF cannot be normalised")
    kernel_extent = 0 if kernel is None else kernel.shape[0] - 1
    size = (_natural_size(reference_psf) + kernel_extent if size is None
            else _odd_size(size, "size"))
    image = render_psf(reference_psf, size, oversampling=oversampling)
    if kernel is not None:
        stuffed = np.zeros((oversampling * kernel_extent + 1,) * 2)
        stuffed[::oversampling, ::oversampling] = kernel
        image = fftconvolve(image, stuffed, mode="same")
    total = image.sum()
    if not np.isfinite(total) or total == 0:
        raise ValueError("the rendered PSF sums to zero; check the PSF model and its size")
    image = image * (oversampling ** 2 / total)
    return ImagePSF(image, flux=1.0, x_0=0.0, y_0=0.0, oversampling=oversampling)


def build_reference_psf(reference, positions, size=15, oversampling=4, *, background=None,
                        maxiters=10):
    """
    An empirical (effective) PSF built from isolated stars of the reference.

    Cutouts around ``positions`` are extracted with
    `~photutils.psf.extract_stars` and combined by
    `~photutils.psf.EPSFBuilder` (Anderson & King 2000).

    Parameters
    ----------
    reference : `~astropy.nddata.CCDData` or `~astropy.nddata.NDData`
        The reference image; its mask is honoured.
    positions : `~astropy.table.Table`, (N, 2) array_like or `~astropy.coordinates.SkyCoord`
        Bright, isolated, unsaturated stars: a table with ``x``/``y``
        (or ``xcentroid``/``ycentroid``, ``x_0``/``y_0``) columns,
        ``(x, y)`` pairs (0-based pixels), or sky positions converted with
        the reference's WCS. Stars whose cutout leaves the image are
        skipped.
    size : int, optional
        Odd side of the cutouts in pixels; four to five FWHM.
    oversampling : int, optional
        Oversampling of the ePSF.
    background : float, `~astropy.units.Quantity` or array_like, optional
        Sky to subtract from the reference first; by default its
        sigma-clipped median.
    maxiters : int, optional
        Iterations of the ePSF builder.

    Returns
    -------
    psf : `~photutils.psf.ImagePSF`
        The effective PSF, normalised to unit flux.

    Raises
    ------
    ValueError
        If fewer than two stars have a cutout inside the image.

    Warns
    -----
    astropy.utils.exceptions.AstropyUserWarning
        From the builder, when it did not converge within ``maxiters``.
    """
    from photutils.psf import EPSFBuilder, ImagePSF, extract_stars

    if not isinstance(reference, NDData):
        raise TypeError(f"reference must be a CCDData or NDData, got {type(reference).__name__}")
    size = _odd_size(size, "size")
    oversampling = _oversampling(oversampling)
    data = np.asarray(reference.data, dtype=float)
    mask = ~np.isfinite(data)
    if reference.mask is not None:
        mask |= np.asarray(reference.mask, bool)
    if background is None:
        background = sigma_clipped_stats(data, mask=mask)[1]
    else:
        unit = getattr(reference, "unit", None)
        background = (background.to_value(unit) if hasattr(background, "to_value")
                      and unit is not None else np.asarray(background, dtype=float))
    x, y = pixel_positions(positions, getattr(reference, "wcs", None), data.shape)
    catalog = QTable({"x": x, "y": y})
    image = NDData(np.where(mask, 0.0, data - background), mask=mask)
    with warnings.catch_warnings():
        # stars too close to the edge are skipped with a warning; counted below
        warnings.filterwarnings("ignore", message=".*cutout.*", category=AstropyUserWarning)
        stars = extract_stars(image, catalog, size=size)
    if len(stars) < 2:
        raise ValueError(
            f"only {len(stars)} of the {len(catalog)} stars have a {size} x {size} cutout "
            "inside the reference; give more stars away from the edges or a smaller size")
    builder = EPSFBuilder(oversampling=oversampling, maxiters=maxiters, progress_bar=False)
    epsf = builder(stars).epsf
    data = np.asarray(epsf.data, dtype=float)
    data = data * (oversampling ** 2 / data.sum())
    return ImagePSF(data, flux=1.0, x_0=0.0, y_0=0.0, oversampling=oversampling)
